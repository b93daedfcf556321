"""Shared test helpers (test modules import them: ``from helpers import ...``; tests/conftest.py
holds the fixtures). Test code never re-implements an op: pygen/ref is the oracle.

Triton runs under its interpreter when no GPU is present: importing this module sets
TRITON_INTERPRET before triton or pygen is imported (tests/conftest.py imports it first).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pygen import _backend  # noqa: E402 (after setting TRITON_INTERPRET, which pygen reads at import)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# Absolute slack on top of the Flash-Attention rule, by dtype.
ATOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def backend_params(kernel_only: bool = False, family: str | None = None):
    """pytest params over (device, backend), with unavailable pairs skipped and the reason shown
    (``family``: as pygen's backend choice sees that family's ops, _backend.TORCH_CPU_FAMILIES)."""
    params = []
    for dev in ("cpu", "cuda"):
        for b in _backend.BACKENDS:
            if kernel_only and b == "reference":
                continue
            if dev == "cpu" and b == "cuda" or dev == "cuda" and b == "cpu":
                continue
            ok, why = _backend.backend_status(b, dev, family)
            if dev == "cuda" and not torch.cuda.is_available():
                ok, why = False, "no CUDA device"
            marks = [] if ok else [pytest.mark.skip(reason=f"{b} on {dev}: {why}")]
            params.append(pytest.param(dev, b, id=f"{dev}-{b}", marks=marks))
    return params


def dtypes_for(backend: str, device: str):
    """The dtypes a backend takes on a device (float64 only on cpu/reference; bf16 arithmetic is
    broken in the Triton interpreter, but the kernels upcast right after the load, so it runs)."""
    dts = [torch.float32, torch.float16, torch.bfloat16]
    if backend in ("cpu", "reference"):
        dts.append(torch.float64)
    return dts


def assert_close_to_ref(
    out: torch.Tensor,
    ref64: torch.Tensor,
    same_dtype: torch.Tensor | None = None,
    atol: float | None = None,
    what: str = "",
) -> None:
    """|out - ref64| <= 2 |same_dtype - ref64| + atol elementwise (the Flash-Attention rule);
    without ``same_dtype`` it is |out - ref64| <= atol + rtol(dtype) |ref64|."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    atol = ATOL[out.dtype] if atol is None else atol
    o = out.detach().to("cpu", torch.float64)
    r = ref64.detach().to("cpu", torch.float64)
    err = (o - r).abs()
    if same_dtype is not None:
        bound = 2 * (same_dtype.detach().to("cpu", torch.float64) - r).abs() + atol
    else:
        rtol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[out.dtype]
        bound = atol + rtol * r.abs()
    bad = ~(err <= bound)
    if bad.any():
        i = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.numel()} elements off; first at {i}: "
            f"got {o[tuple(i)].item()!r}, ref {r[tuple(i)].item()!r}, "
            f"max err {err.max().item():.3g}"
        )


def make_rois(
    k: int,
    batch: int,
    height: int,
    width: int,
    spatial_scale: float,
    gen: torch.Generator,
    dtype=torch.float32,
    device="cpu",
    special: bool = True,
) -> torch.Tensor:
    """Random boxes in image coordinates for a [batch, C, height, width] map at ``spatial_scale``:
    mostly inside, some overhanging the border, and (``special``) one zero-area box, one wholly
    outside the map and one inverted box."""
    img_w, img_h = width / spatial_scale, height / spatial_scale
    b = torch.randint(0, batch, (k, 1), generator=gen).to(torch.float64)
    x1 = torch.rand(k, 1, generator=gen, dtype=torch.float64) * img_w * 1.1 - 0.05 * img_w
    y1 = torch.rand(k, 1, generator=gen, dtype=torch.float64) * img_h * 1.1 - 0.05 * img_h
    bw = torch.rand(k, 1, generator=gen, dtype=torch.float64) * img_w * 0.6
    bh = torch.rand(k, 1, generator=gen, dtype=torch.float64) * img_h * 0.6
    rois = torch.cat([b, x1, y1, x1 + bw, y1 + bh], dim=1)
    if special and k >= 3:
        rois[0, 3:] = rois[0, 1:3]  # zero area
        rois[1, 1:] = torch.tensor([-3 * img_w, -3 * img_h, -2 * img_w, -2 * img_h])  # outside
        rois[2, 1:] = torch.tensor([rois[2, 3], rois[2, 4], rois[2, 1], rois[2, 2]])  # inverted
    return rois.to(dtype=dtype, device=device)


def make_input(shape, dtype, device, gen: torch.Generator, channels_last: bool = False) -> torch.Tensor:
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def compile_in_child(child_code: str, *args: str, env_extra: dict | None = None) -> list[dict]:
    """Run ``child_code`` (which prints one JSON list of compile rows as its last line) in a child
    Python without TRITON_INTERPRET: under the interpreter @triton.jit objects cannot be compiled
    offline. Returns the rows; skips the test when the child found no usable ptxas."""
    import json
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="0", **(env_extra or {}))
    res = subprocess.run(
        [sys.executable, "-c", child_code, *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    for r in rows:
        if r.get("error") and "ptxas" in r["error"] and r.get("registers") is None and r.get("wgmma") is None:
            pytest.skip(f"no usable ptxas: {r['error']}")
    return rows


def assert_compiled_without_spills(rows: list[dict]) -> None:
    for r in rows:
        assert r["error"] is None, r
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r


def _triton_skip() -> str | None:
    """Why the Triton backend cannot run here (no Triton, too old, not interpreting on CPU), or None.
    Where it can run, its kernel modules must import: a failing import is a failure, not a skip."""
    ok, why = _backend.backend_status("triton", "cpu")
    return None if ok else why


TRITON_SKIP = _triton_skip()  # why the Triton backend cannot run here, or None
requires_triton = pytest.mark.skipif(TRITON_SKIP is not None, reason=str(TRITON_SKIP))
# the module tests' backends: the reference, and Triton where it runs (CPU: its interpreter)
MODULE_BACKENDS = ["reference", pytest.param("triton", marks=requires_triton)]


def losses_launchers() -> list:
    """The modules every launch of a losses op goes through, for assert_raises_before_launch: the
    cpu backend's (pygen/ops/_losses_cpu.py) and, where Triton runs, pygen.kernels.losses."""
    from pygen.ops import _losses_cpu

    if TRITON_SKIP is not None:
        return [_losses_cpu]
    from pygen.kernels import losses

    return [_losses_cpu, losses]


ROOT = Path(__file__).resolve().parents[1]


def nvcc() -> str | None:
    """The nvcc setup.py would use (pygen/_cuda_toolkit.py), or None."""
    from pygen._cuda_toolkit import find_nvcc

    return find_nvcc()


requires_nvcc = pytest.mark.skipif(nvcc() is None, reason="nvcc not found")


def compile_cu_sm90a(cu: str, out_dir: Path) -> list[tuple[str, int, int]]:
    """Compile csrc/``cu`` for sm_90a with ptxas -v; returns (kernel, spill store bytes, spill load
    bytes) per entry function (asserts the compile succeeded and every entry reported its spills)."""
    import subprocess

    src = ROOT / "csrc" / cu
    cmd = [
        nvcc(),
        "-std=c++17",
        "-O3",
        "-gencode=arch=compute_90a,code=sm_90a",
        "-Xptxas",
        "-v",
        f"-I{ROOT / 'csrc'}",
        "-c",
        str(src),
        "-o",
        str(out_dir / (src.stem + ".o")),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    entries = re.findall(r"Compiling entry function '(\w+)' for 'sm_90a'", log)
    assert entries and len(spills) == len(entries), log
    return [(name, int(st), int(ld)) for name, (st, ld) in zip(entries, spills)]


def assert_raises_before_launch(monkeypatch, launchers, names, call, exc, text: str, backend: str | None) -> None:
    """``call()`` raises ``exc`` with ``text`` in its message, with each of ``names`` in the module
    ``launchers`` (or in each module of a list) replaced by a stub that fails the test (so the check
    comes before any launch), and ``backend`` as PYGEN_BACKEND (None: the automatic choice)."""
    for module in launchers if isinstance(launchers, list) else [launchers]:
        for name in names:
            monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("kernel launched on bad input"))
    if backend is not None:
        monkeypatch.setenv("PYGEN_BACKEND", backend)
    with pytest.raises(exc, match=re.escape(text)):
        call()


def opcheck_registered(name: str, cases, family: str | None = None) -> None:
    """torch.library.opcheck of the registered op ``name`` (``<op>_<backend>``) on each argument
    tuple of ``cases(name, device)``, on the GPU when there is one; skips when the backend cannot run
    (for an op of ``family``, as in backend_params)."""
    from pygen.ops import _registry

    backend = name.rsplit("_", 1)[1]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ok, why = _backend.backend_status(backend, dev, family)
    if not ok:
        pytest.skip(why)
    for args in cases(name, dev):
        torch.library.opcheck(_registry.get(name), args)


def public_ops() -> set[str]:
    """The names of pygen.ops' public functions (those defined in a pygen.ops module): what the
    per-op case lists of the cross-cutting tests must cover."""
    from pygen import ops

    return {
        n
        for n in dir(ops)
        if not n.startswith("_")
        and callable(getattr(ops, n))
        and getattr(getattr(ops, n), "__module__", "").startswith("pygen.ops")
    }


def route_kwargs(n_group: int, topk_group: int, scoring: str, bias, norm: bool, scale: float) -> dict:
    """moe_route's keyword arguments (the op's and the reference's) for one routing case."""
    kw = dict(scoring=scoring, e_score_correction_bias=bias, n_group=n_group, topk_group=topk_group)
    return {**kw, "norm_topk_prob": norm, "routed_scaling_factor": scale}


# The attention shape of the MLA module tests (pygen's config and transformers' alike): 2 small
# heads, and DeepSeek-V3's latent dims (512 + 64, what the decode kernel takes) with small
# per-head nope / value dims.
_TINY_HEADS = dict(hidden_size=48, num_attention_heads=2, num_key_value_heads=2, q_lora_rank=24)
_TINY_LATENT = dict(kv_lora_rank=512, qk_nope_head_dim=32, qk_rope_head_dim=64, v_head_dim=32)
TINY_MLA_DIMS = {**_TINY_HEADS, **_TINY_LATENT}


def moe_routing(*, experts: int, top_k: int, n_group: int, topk_group: int) -> dict:
    """The routing fields of a DeepseekV3Config / pygen.nn.MoE: ``experts`` routed experts, each
    token's ``top_k`` of them taken from the ``topk_group`` best of ``n_group`` groups."""
    return dict(n_routed_experts=experts, num_experts_per_tok=top_k, n_group=n_group, topk_group=topk_group)


# DeepSeek-V3's group-limited routing in miniature: 8 experts, top-3 of the 2 best of 4 groups
# (the MoE module, expert-parallel and transformers tests' layers).
GROUPED_ROUTING = moe_routing(experts=8, top_k=3, n_group=4, topk_group=2)

# transformers' own DeepseekV3 tests (DeepseekV3ModelTester): top_k = all 8 experts although the
# one kept group holds 4, so 4 masked experts are routed to as well.
TRANSFORMERS_TEST_ROUTING = moe_routing(experts=8, top_k=8, n_group=2, topk_group=1)


def topk_ties_to_lower_index(x, k, dim=-1, largest=True, sorted=True):
    """torch.topk with the tie rule of ATen's CUDA kernel (gatherTopK in TensorTopK.cu: the values
    beyond the k-th, then those equal to it in ascending index order): a stable sort's first k.
    Patched over torch.topk, it makes transformers' router choose among tied (masked) experts as it
    does on a GPU, where CPU torch.topk follows no fixed rule."""
    idx = torch.sort(x, dim=dim, descending=largest, stable=True).indices.narrow(dim, 0, k)
    return torch.return_types.topk((x.gather(dim, idx), idx))


def assert_rounded_bf16(out: torch.Tensor, exact: torch.Tensor, what: str, rel: float = 2**-12) -> None:
    """``out`` (a bf16 kernel result) is ``exact`` (the float64 reference) rounded to the nearest
    bf16, as the GPU's store rounds (interpreter stores truncate unless kernels/_bf16.cast rounds
    first). Elements within ``rel`` (relative to the tensor's largest value) of a tie between two bf16
    neighbours are skipped: fp32 accumulation order decides them. The check must discriminate: rounding
    toward zero has to differ on a tenth of the checked elements."""
    assert out.dtype == torch.bfloat16, f"{what}: dtype {out.dtype}"
    exact = exact.detach().double().cpu()
    got = out.detach().double().cpu()
    lo_bits = exact.float().view(torch.int32) & -65536  # toward zero onto the bf16 grid
    lo = lo_bits.view(torch.float32).double()
    hi = (lo_bits + 65536).view(torch.float32).double()
    clear = (exact - (lo + hi) / 2).abs() > rel * exact.abs().max().clamp_min(1e-30)
    near = exact.to(torch.bfloat16).double()
    bad = (got != near) & clear
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {int(clear.sum())} not rounded to nearest, e.g. {got[bad][:4]} vs {near[bad][:4]}"
    )
    assert int(((lo != near) & clear).sum()) * 10 >= int(clear.sum()), (
        f"{what}: the inputs cannot tell rounding from truncation"
    )


def _gloo_rank(rank: int, world: int, init_file: str, run, timeout_s: float) -> None:
    import datetime
    import traceback

    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timeout)
    torch.set_num_threads(1)
    errs: list[str] = []
    try:
        try:
            errs += run(rank, world, dist.group.WORLD)
        except Exception:
            # a rank that dies mid-collective would leave its peers waiting: report instead
            errs.append(f"[rank {rank}/{world}] raised:\n{traceback.format_exc()}")
            raise
    finally:
        if errs:
            raise AssertionError("\n".join(errs))
        dist.destroy_process_group()


def run_gloo_ranks(run, world: int, preload: list[str], timeout_s: float = 120) -> None:
    """``run(rank, world, group) -> [error lines]`` (a module-level function) in ``world`` gloo
    processes on CPU; any rank's errors fail the test, and so does a collective that waits longer
    than ``timeout_s`` (a rank left waiting for its peers fails instead of hanging). forkserver:
    torch and ``preload`` are imported once in the server, each rank is a cheap fork of it, and
    unlike a plain fork no rank inherits OpenMP state from the pytest process."""
    import tempfile

    import torch.multiprocessing as mp

    mp.set_forkserver_preload(["torch", "torch.distributed", *preload])
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(
            _gloo_rank, args=(world, os.path.join(d, "rendezvous"), run, timeout_s), nprocs=world, join=True,
            start_method="forkserver",
        )  # fmt: skip
