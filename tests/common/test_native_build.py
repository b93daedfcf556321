"""Build checks for the csrc modules that need no GPU.

* csrc/roi/roi.cu compiles for sm_90a with ``-Xptxas -v`` and ptxas reports no register spills
  (skipped only when nvcc is absent).
* pygen._C imports and exposes the RoI launcher contract (docs/ARCHITECTURE.md).
* The registered native ops called directly, without pygen.ops' validation, refuse bad input
  with an error naming the argument (the bindings' memory-safety checks), never crash.
"""

from __future__ import annotations

import helpers
import pytest
import torch
from helpers import compile_cu_sm90a, requires_nvcc

import pygen.ops
from pygen import _ext

CONTRACT = (
    "roi_align_fwd",
    "roi_align_bwd",
    "roi_pool_fwd",
    "roi_pool_bwd",
    "ps_roi_align_fwd",
    "ps_roi_align_bwd",
    "ps_roi_pool_fwd",
    "ps_roi_pool_bwd",
    "multi_scale_roi_align_fwd",
    "multi_scale_roi_align_bwd",
)


@requires_nvcc
def test_roi_cu_compiles_for_sm90a_without_spills(tmp_path):
    rows = compile_cu_sm90a("roi/roi.cu", tmp_path)
    spilling = [name for name, st, ld in rows if st or ld]
    assert not spilling, f"register spills in: {spilling}"


def test_host_module_exposes_contract():
    import pygen._C as C

    missing = [f for f in CONTRACT if not callable(getattr(C, f, None))]
    assert not missing, f"pygen._C lacks {missing}"


def test_one_nvcc_finder(tmp_path, monkeypatch):
    """setup.py, ``pygen inspect`` and these tests find nvcc through pygen/_cuda_toolkit.py: a
    CUDA_HOME holding bin/nvcc wins for all of them."""
    from pygen.tools import inspect as inspect_kernels

    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\n")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    setup_src = (helpers.ROOT / "setup.py").read_text()
    assert "return _toolkit_finder().find_cuda()" in setup_src and 'which("nvcc")' not in setup_src
    assert helpers.nvcc() == inspect_kernels.find_nvcc() == str(nvcc)


# ---- the registered native ops called directly (TorchScript path): bad input raises -------------
# torch.ops.pygen.<op>_cpu skips pygen.ops' validation; the bindings' memory-safety checks
# (csrc/common/tensor_arg.h) and pygen._ext.call's device check must still refuse what would read
# or write out of bounds, with an error naming the argument, instead of crashing.
X = torch.randn(2, 3, 8, 8)
ROIS = torch.tensor([[0, 1.0, 1, 6, 6], [1, 0, 0, 7, 3]])
ROI_ALIGN_BAD = [
    ("rois must be float32", TypeError, (X, ROIS.double())),  # would read 8-byte rows from 4-byte ones
    ("rois: expected shape", ValueError, (X, ROIS[:, :4])),
    ("rois: must be contiguous", ValueError, (X, ROIS.t().contiguous().t())),
    ("rois: expected a 2-d", ValueError, (X, ROIS[0])),
    ("input: expected a 4-d", ValueError, (X[0], ROIS)),
    ("out must be a floating-point", TypeError, (X.to(torch.int32), ROIS)),
]


@pytest.mark.parametrize("match,exc,args", ROI_ALIGN_BAD, ids=[c[0] for c in ROI_ALIGN_BAD])
def test_direct_roi_align_cpu_bad_input_raises(match, exc, args):
    with pytest.raises(exc, match=match):
        torch.ops.pygen.roi_align_cpu(*args, 2, 2, 1.0, 2, False)


def test_direct_roi_align_cpu_matches_the_op():
    ref = pygen.ops.roi_align(X, ROIS, 2, 1.0, 2, backend="cpu")
    torch.testing.assert_close(torch.ops.pygen.roi_align_cpu(X, ROIS, 2, 2, 1.0, 2, False), ref, rtol=0, atol=0)


NATIVE_BAD = [
    # float64 grad_out: the compute type is float64, the float32 rois do not match it
    (
        "rois must be float64",
        TypeError,
        lambda: torch.ops.pygen.roi_align_backward_cpu(
            torch.zeros(2, 3, 2, 2, dtype=torch.float64), ROIS, 2, 3, 8, 8, 1.0, 2, False, False
        ),
    ),
    (
        "argmax must be int32",
        TypeError,
        lambda: torch.ops.pygen.roi_pool_backward_cpu(
            torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 2, dtype=torch.int64), ROIS, 2, 3, 8, 8, False
        ),
    ),
    (
        "argmax must have shape",
        ValueError,
        lambda: torch.ops.pygen.roi_pool_backward_cpu(
            torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 1, dtype=torch.int32), ROIS, 2, 3, 8, 8, False
        ),
    ),
    (
        "expected 1 to 8 levels",
        ValueError,
        lambda: torch.ops.pygen.multi_scale_roi_align_cpu([X] * 9, ROIS, 2, 2, [1.0] * 9, 2, 224.0, 4.0, False),
    ),
    # 4 pooled channels x 2 x 2 bins need 16 input channels, the grad buffer has 3
    (
        "input channels must be at least",
        ValueError,
        lambda: torch.ops.pygen.ps_roi_pool_backward_cpu(torch.zeros(2, 4, 2, 2), ROIS, 2, 3, 8, 8, 1.0, False),
    ),
    ("ids must be int32 or int64", TypeError, lambda: torch.ops.pygen.moe_align_cpu(torch.zeros(3, 2), 4, 2)),
    (
        "bias must have shape",
        ValueError,
        lambda: torch.ops.pygen.moe_route_cpu(torch.randn(3, 8), torch.zeros(7), 2, "sigmoid", 1, 1, True, 1.0),
    ),
    (
        "sorted_slots must be int32",
        TypeError,
        lambda: torch.ops.pygen.moe_unpermute_backward_cpu(
            torch.zeros(2, 4), torch.zeros(4, 4), torch.arange(4), None, True, False
        ),
    ),
]


@pytest.mark.parametrize("match,exc,fn", NATIVE_BAD, ids=[c[0] for c in NATIVE_BAD])
def test_direct_native_ops_bad_input_raises(match, exc, fn):
    with pytest.raises(exc, match=match):
        fn()


def test_ext_call_refuses_mixed_devices_and_unknown_kernels():
    out = X.new_zeros(2, 3, 2, 2)
    with pytest.raises(ValueError, match="argument 1 is on meta"):
        _ext.call("roi_align_fwd", X, ROIS.to("meta"), out, 1.0, 2, False)
    with pytest.raises(RuntimeError, match="no such kernel"):
        _ext.call("no_such_kernel", X)
