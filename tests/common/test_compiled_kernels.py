"""Static check over ``pygen inspect``'s compiled output (issue 11), no GPU needed: every entry of
every kernels family's COMPILE_SPECS compiles offline for sm_90 with zero spill stores and loads,
and every entry marked ``"tensor_cores": True`` (the matmul-class kernels at their tensor-core
tiles: masked_linear / MADE 16-bit, fp8_gemm, fused_moe 16-bit prefill and backward, MLA decode at
64+ rows and MLA prefill) shows wgmma in its PTX.

The specs cover every dtype a kernel accepts where the tile differs by dtype (bf16 / fp16 / fp32
for made, fused_moe, mla_decode and mla_prefill).

One child process per family (the rows come from pygen.tools.inspect.triton_rows, the code
behind ``pygen inspect``), two at a time. Cold (empty Triton cache) about 10 minutes on 2 busy
cores; warm about a minute.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import assert_compiled_without_spills, compile_in_child

FAMILIES = ["flows", "fp8", "losses", "made", "mla", "moe", "roi"]

CHILD = """
import json, sys, warnings
warnings.simplefilter("ignore")
from pygen.tools.inspect import triton_rows
rows = triton_rows([sys.argv[1]])
keep = ("family", "kernel", "config", "error", "registers", "spill_stores", "spill_loads", "stack", "smem",
        "wgmma", "wgmma_shapes", "tensor_cores")
print(json.dumps([{k: r.get(k) for k in keep} for r in rows], default=str))
"""


@pytest.fixture(scope="module")
def rows():
    from pygen.tools.inspect import known_families

    # every family with Triton kernels is listed (the CUDA-only ones have no COMPILE_SPECS)
    assert set(FAMILIES) <= set(known_families())
    jobs = max(1, min(2, os.cpu_count() or 1))
    env = {"TRITON_DEFAULT_FP_FUSION": os.environ.get("TRITON_DEFAULT_FP_FUSION", "1")}
    with ThreadPoolExecutor(jobs) as ex:
        per_family = list(ex.map(lambda f: compile_in_child(CHILD, f, env_extra=env), FAMILIES))
    return {f: r for f, r in zip(FAMILIES, per_family)}


def test_every_family_has_specs(rows):
    for fam, rs in rows.items():
        assert rs, f"kernels/{fam}.py lists no COMPILE_SPECS"


@pytest.mark.parametrize("family", FAMILIES)
def test_compiles_without_spills(rows, family):
    assert_compiled_without_spills(rows[family])


@pytest.mark.parametrize("family", ["fp8", "losses", "made", "mla", "moe"])
def test_tensor_core_kernels_use_wgmma(rows, family):
    marked = [r for r in rows[family] if r["tensor_cores"]]
    assert marked, f"no {family} spec is marked tensor_cores"
    bad = [(r["kernel"], r["config"]) for r in marked if r["wgmma"] is not True]
    assert not bad, f"marked tensor_cores but no wgmma in the sm_90 PTX: {bad}"


def test_specs_cover_the_dtypes_each_kernel_accepts(rows):
    names = {r["kernel"] for rs in rows.values() for r in rs}
    want = [
        "masked_linear_fwd[fp16]",
        "masked_linear_fwd[bf16]",
        "masked_linear_fwd[fp32]",
        "made_sample_persistent[fp16]",
        "made_sample_persistent[bf16]",
        "made_sample_persistent[fp32]",
        "fused_moe_gate_up[fp16,prefill]",
        "fused_moe_down[fp16,prefill]",
        "fused_moe_bwd_dw1[fp16]",
        "fused_moe_gate_up[fp32,prefill]",
        "fused_moe_bwd_dx[fp32]",
        "mla_decode[fp16,h128,sq1]",
        "mla_decode[fp32,h16,sq1]",
        "mla_decode[fp32,h128,sq1]",
        "mla_prefill_fwd[fp32,causal]",
        "mla_prefill_bwd_dkdv[fp32,causal]",
        "mla_prefill_bwd_dq[fp32,causal]",
    ]
    missing = [n for n in want if n not in names]
    assert not missing, missing


def test_mla_decode_fp32_has_its_own_tile(rows):
    """Issue 11: at the bf16 tile (64 x 16) a float32 decode compiled to ~17-28 KB of spills, a 7-12 KB
    stack and 184-188 KB of shared memory; its own tile keeps it spill-free and under 128 KB."""
    r = {x["kernel"]: x for x in rows["mla"]}
    for name in ("mla_decode[fp32,h16,sq1]", "mla_decode[fp32,h128,sq1]"):
        assert r[name]["spill_stores"] == 0 and r[name]["stack"] == 0, r[name]
        assert r[name]["smem"] <= 128 * 1024, r[name]


def test_mla_prefill_fp32_has_its_own_tiles(rows):
    """At the bf16 tiles a float32 prefill compiled to 25-41 KB of spills and 164-295 KB of shared
    memory (the forward could not launch); its own tiles are spill-free and at most 200 KB."""
    r = {x["kernel"]: x for x in rows["mla"]}
    for name in (
        "mla_prefill_fwd[fp32,causal]",
        "mla_prefill_bwd_dkdv[fp32,causal]",
        "mla_prefill_bwd_dq[fp32,causal]",
    ):
        assert r[name]["spill_stores"] == 0 and r[name]["stack"] == 0, r[name]
        assert r[name]["smem"] <= 200 * 1024, r[name]
