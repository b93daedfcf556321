"""The matmul-class MLA kernels compile offline for sm_90 without register spills and use wgmma
where the tile allows it (no GPU needed): decode at 128 heads (bf16 cache: wgmma; FP8 cache:
16-row mma.sync tiles, below wgmma's 64, because the 64-row tile spilled under Triton 3.6 and 3.8),
decode at 16 heads with the FP8 cache, prefill forward and both backward kernels. ``pygen inspect
mla`` compiles all entries of kernels/mla/__init__.py's COMPILE_SPECS.

The compiles run in a child process: conftest sets TRITON_INTERPRET=1 on machines without a GPU,
and under it @triton.jit yields interpreter objects that cannot be compiled.
"""

from __future__ import annotations

from helpers import assert_compiled_without_spills, compile_in_child

CHILD = """
import json
from pygen.tools.inspect import compile_triton_spec
from pygen.kernels import mla
PICK = {"mla_decode[bf16,h128,sq2]": True, "mla_decode[fp8,h128,sq1]": False, "mla_decode[fp8,h16,sq1]": False,
        "mla_prefill_fwd[bf16,causal]": True, "mla_prefill_bwd_dkdv[bf16,causal]": True,
        "mla_prefill_bwd_dq[bf16,causal]": True}
rows = []
for spec in mla.COMPILE_SPECS:
    if spec["name"] in PICK:
        r = compile_triton_spec(spec, "mla")
        r["want_wgmma"] = PICK[spec["name"]]
        rows.append({k: r.get(k) for k in ("kernel", "error", "spill_stores", "spill_loads", "registers", "wgmma",
                                           "want_wgmma")})
print(json.dumps(rows))
"""


def test_mla_kernels_compile_for_sm90_without_spills():
    rows = compile_in_child(CHILD)
    assert len(rows) == 6, [r["kernel"] for r in rows]
    assert_compiled_without_spills(rows)
    for r in rows:
        assert r["wgmma"] == r["want_wgmma"], r
