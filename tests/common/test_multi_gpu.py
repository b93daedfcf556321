"""Launches on the second GPU (issue 11): every case of tests/common/gpu_cases.py on each kernel backend,
with its tensors on cuda:1 while cuda:0 is the current device. The op must launch on its tensors'
device (Triton launches on the current device unless told otherwise; csrc needs a device guard),
put its outputs there, leave the current device as it was, and give what it gives on cuda:0.
Value checks stay on (the default), so their host reads of cuda:1 tensors run too.

Skipped unless torch.cuda.device_count() > 1 (the lent machines have one GPU today; the test is
ready for the multi-GPU kinds).
"""

from __future__ import annotations

import gpu_cases as C
import pytest
import torch

from pygen import _backend

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="needs two CUDA GPUs (torch.cuda.device_count() > 1)",
)

PARAMS = [pytest.param(c, b, id=i) for (c, b), i in C.params()]


@pytest.mark.parametrize("case,backend", PARAMS)
def test_runs_on_cuda1_while_cuda0_is_current(case, backend):
    if backend is not None:
        ok, why = _backend.backend_status(backend, "cuda:1")
        if not ok:
            pytest.skip(f"{backend} on cuda: {why}")
    what = f"{case.name} ({backend})"
    inputs = case.make(0)
    torch.cuda.set_device(0)
    want = case.call(C.to_device(inputs, "cuda:0"), backend)
    on1 = C.to_device(inputs, "cuda:1")
    got = case.call(on1, backend)
    torch.cuda.synchronize(1)
    assert torch.cuda.current_device() == 0, f"{what} left cuda:{torch.cuda.current_device()} current"
    for t in C.tensors(got):
        assert t.device == torch.device("cuda:1"), f"{what}: an output on {t.device}"
    C.assert_same_result(got, want, f"{what} on cuda:1 vs cuda:0")


def test_second_gpu_backward_roi_align_and_fused_moe():
    """The backward kernels launch on the tensors' device too (two families with scatter
    backward: csrc RoI and the Triton MoE)."""
    torch.cuda.set_device(0)
    for name, backend in (("roi_align", "cuda"), ("roi_align", "triton"), ("fused_moe", "triton")):
        case = next(c for c in C.CASES if c.name == name)
        ok, _ = _backend.backend_status(backend, "cuda:1")
        if not ok:
            continue
        grads = []
        for dev in ("cuda:0", "cuda:1"):
            inp = C.to_device(case.make(0), dev)
            x = inp["x"].requires_grad_(True)
            out = case.call(inp, backend)
            (g,) = torch.autograd.grad(out.float().square().sum(), x)
            assert g.device == torch.device(dev)
            grads.append(g)
        assert torch.cuda.current_device() == 0
        C.assert_same_result(grads[1], grads[0], f"{name} ({backend}) backward on cuda:1")
