"""Every Triton launch runs with its tensors' CUDA device current (issue 11: the persistent
made_sample launched on whatever device was current; cuda:1 tensors with cuda:0 current is an
illegal address). One guard does it, kernels/_device.py; these tests check on CPU that every
launch of every public op, forward and backward, happens inside it, and that no other module
sets the device its own way. tests/common/test_multi_gpu.py runs the real thing when two GPUs exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from test_host_sync import CALLS, _backward_calls, _call

from pygen.kernels import _device

triton = pytest.importorskip("triton")
interpreter = pytest.importorskip("triton.runtime.interpreter")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def launches(monkeypatch):
    """(kernel name, guarded?) of every interpreted launch in the test."""
    seen = []
    orig = interpreter.InterpretedFunction.run

    def run(self, *args, **kwargs):
        seen.append((getattr(self.fn, "__name__", "?"), _device.depth() > 0))
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", run)
    return seen


def _assert_guarded(seen, what):
    assert seen, f"{what}: no Triton launch seen (did the op take another backend?)"
    bare = sorted({name for name, guarded in seen if not guarded})
    assert not bare, f"{what}: launched outside the device guard: {bare}"


# public ops that launch no Triton kernel (pure torch or reference-only)
NO_TRITON_KERNEL = {"planar", "radial", "dequantize_fp8", "pack_bits", "group_advantages"}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_forward_launch_is_guarded(name, launches):
    _call(name)()
    if name in NO_TRITON_KERNEL:
        assert not launches, f"{name} launches Triton kernels now: drop it from NO_TRITON_KERNEL"
        return
    _assert_guarded(launches, name)


@pytest.mark.parametrize("name", sorted(_backward_calls()))
def test_every_backward_launch_is_guarded(name, launches):
    _backward_calls()[name]()
    _assert_guarded(launches, f"{name} backward")


def test_made_sample_persistent_launch_is_guarded(launches):
    from pygen import ops

    g = torch.Generator().manual_seed(0)
    d, h = 5, 12
    in_deg = torch.arange(1, d + 1)
    hid = torch.randint(1, d, (h,), generator=g)
    weights = [torch.randn(h, d, generator=g), torch.randn(d, h, generator=g)]
    biases = [torch.randn(h, generator=g), torch.randn(d, generator=g)]
    ops.made_sample(
        weights, biases, [in_deg, hid, in_deg], torch.rand(3, d, generator=g), backend="triton", persistent=True
    )
    _assert_guarded(launches, "made_sample")
    assert any(n == "_made_sample_persistent_kernel" for n, _ in launches), launches


def test_one_device_mechanism():
    # torch.cuda.device / set_device appear only in the guard (and in the EP layer, which binds a
    # process to its GPU once, and the CLI)
    allowed = {"kernels/_device.py", "pygen/nn/_moe_ep.py", "pygen/cli.py", "pygen/tools/harness.py"}
    offenders = []
    for path in [*ROOT.glob("kernels/**/*.py"), *ROOT.glob("pygen/**/*.py")]:
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed:
            continue
        if re.search(r"torch\.cuda\.(device|set_device)\(", path.read_text()):
            offenders.append(rel)
    assert not offenders, f"set the CUDA device through kernels/_device.py, not: {offenders}"
