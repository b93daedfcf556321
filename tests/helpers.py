"""Shared test helpers (test modules import them: ``from helpers import ...``; tests/conftest.py
holds the fixtures). Test code never re-implements an op: pygen/ref is the oracle.

Triton runs under its interpreter when no GPU is present: importing this module sets
TRITON_INTERPRET before triton or pygen is imported (tests/conftest.py imports it first).
"""

from __future__ import annotations

import os
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


def backend_params(kernel_only: bool = False):
    """pytest params over (device, backend), with unavailable pairs skipped and the reason shown."""
    params = []
    for dev in ("cpu", "cuda"):
        for b in _backend.BACKENDS:
            if kernel_only and b == "reference":
                continue
            if dev == "cpu" and b == "cuda" or dev == "cuda" and b == "cpu":
                continue
            ok, why = _backend.backend_status(b, dev)
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
    ok, why = _backend.backend_status("triton", "cpu")
    if not ok:
        return why
    try:
        import pygen.kernels.mla  # noqa: F401 (probe: skip without triton)
    except ImportError as exc:
        return f"pygen.kernels.mla not importable yet ({exc})"
    return None


TRITON_SKIP = _triton_skip()  # why the Triton backend cannot run here, or None
# the module tests' backends: the reference, and Triton where it runs (CPU: its interpreter)
MODULE_BACKENDS = [
    "reference",
    pytest.param("triton", marks=pytest.mark.skipif(TRITON_SKIP is not None, reason=str(TRITON_SKIP))),
]


ROOT = Path(__file__).resolve().parents[1]


def nvcc() -> str | None:
    """The nvcc setup.py would use (pygen/_cuda_toolkit.py), or None."""
    from pygen._cuda_toolkit import find_nvcc

    return find_nvcc()


requires_nvcc = pytest.mark.skipif(nvcc() is None, reason="nvcc not found")


def compile_cu_sm90a(cu: str, out_dir: Path) -> list[tuple[str, int, int]]:
    """Compile csrc/``cu`` for sm_90a with ptxas -v; returns (kernel, spill store bytes, spill load
    bytes) per entry function (asserts the compile succeeded and every entry reported its spills)."""
    import re
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
