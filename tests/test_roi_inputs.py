"""RoI family: bad input raises a clear error naming the argument before any launch; hypothesis
fuzzing of boxes (inside, overhanging, outside, zero-area, inverted) against the reference."""
from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

import pygen
from pygen import ops
from pygen.ref import roi as ref

from conftest import assert_close_to_ref

X = torch.randn(2, 8, 6, 7)
ROIS = torch.tensor([[0, 0.0, 0, 4, 4], [1, 1, 1, 5, 3]])

BAD = [
    # (call, error type, text the message must contain)
    (lambda: ops.roi_align(X.numpy(), ROIS, 2), TypeError, "input"),
    (lambda: ops.roi_align(X[0], ROIS, 2), ValueError, "input"),
    (lambda: ops.roi_align(X.int(), ROIS, 2), TypeError, "input"),
    (lambda: ops.roi_align(X, ROIS[:, :4], 2), ValueError, "boxes"),
    (lambda: ops.roi_align(X, ROIS[0], 2), ValueError, "boxes"),
    (lambda: ops.roi_align(X, ROIS.long(), 2), TypeError, "boxes"),
    (lambda: ops.roi_align(X, "boxes", 2), TypeError, "boxes"),
    (lambda: ops.roi_align(X, [ROIS[:, 1:]] * 3, 2), ValueError, "boxes"),
    (lambda: ops.roi_align(X, [ROIS[:, 1:4]], 2), ValueError, "boxes[0]"),
    (lambda: ops.roi_align(X, torch.tensor([[2, 0.0, 0, 4, 4]]), 2), ValueError, "batch index"),
    (lambda: ops.roi_align(X, torch.tensor([[-1, 0.0, 0, 4, 4]]), 2), ValueError, "batch index"),
    (lambda: ops.roi_align(X, torch.tensor([[0.5, 0.0, 0, 4, 4]]), 2), ValueError, "batch index"),
    (lambda: ops.roi_align(X, torch.tensor([[0, float("nan"), 0, 4, 4]]), 2), ValueError, "NaN"),
    (lambda: ops.roi_align(X, torch.tensor([[0, 0, 0, float("inf"), 4]]), 2), ValueError, "infinite"),
    (lambda: ops.roi_align(X, ROIS, 0), ValueError, "output_size"),
    (lambda: ops.roi_align(X, ROIS, (2, -1)), ValueError, "output_size"),
    (lambda: ops.roi_align(X, ROIS, (2, 2, 2)), TypeError, "output_size"),
    (lambda: ops.roi_align(X, ROIS, 2.5), TypeError, "output_size"),
    (lambda: ops.roi_align(X, ROIS, 2, 0.0), ValueError, "spatial_scale"),
    (lambda: ops.roi_align(X, ROIS, 2, -0.25), ValueError, "spatial_scale"),
    (lambda: ops.roi_align(X, ROIS, 2, float("nan")), ValueError, "spatial_scale"),
    (lambda: ops.roi_align(X, ROIS, 2, 1.0, 1.5), TypeError, "sampling_ratio"),
    (lambda: ops.roi_pool(X, ROIS, 0), ValueError, "output_size"),
    (lambda: ops.roi_pool(X, ROIS, 2, 0), ValueError, "spatial_scale"),
    (lambda: ops.roi_pool(X, torch.tensor([[5, 0.0, 0, 4, 4]]), 2), ValueError, "batch index"),
    (lambda: ops.ps_roi_align(X, ROIS, 3), ValueError, "divisible"),
    (lambda: ops.ps_roi_pool(X, ROIS, (2, 3)), ValueError, "divisible"),
    (lambda: ops.ps_roi_pool(X, ROIS, 2, -1.0), ValueError, "spatial_scale"),
    (lambda: ops.multi_scale_roi_align([], ROIS, 2, []), ValueError, "features"),
    (lambda: ops.multi_scale_roi_align(X, ROIS, 2, [1.0]), TypeError, "features"),
    (lambda: ops.multi_scale_roi_align([X, X], ROIS, 2, [0.25]), ValueError, "spatial_scales"),
    (lambda: ops.multi_scale_roi_align([X, X[:, :4]], ROIS, 2, [0.25, 0.125]), ValueError, "features[1]"),
    (lambda: ops.multi_scale_roi_align([X, X.double()], ROIS, 2, [0.25, 0.125]), ValueError, "features[1]"),
    (lambda: ops.multi_scale_roi_align([X] * 9, ROIS, 2, [0.25] * 9), ValueError, "features"),
    (lambda: ops.multi_scale_roi_align([X, X], ROIS, 2, [0.25, 0.0]), ValueError, "spatial_scales[1]"),
    (lambda: ops.multi_scale_roi_align([X, X], ROIS, 2, 0.25), TypeError, "spatial_scales"),
    (lambda: ops.multi_scale_roi_align([X], ROIS, 2, [0.25], canonical_scale=0), ValueError, "canonical_scale"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_bad_input_raises_before_launch(case, backend, monkeypatch):
    call, exc, text = BAD[case]
    # Any launch would go through the launcher modules: make reaching one an error of its own.
    import pygen.ops.roi as roi_ops

    def no_launch(b):
        raise AssertionError("a kernel launcher was reached with invalid input")

    monkeypatch.setattr(roi_ops, "_launcher", no_launch)
    monkeypatch.setenv("PYGEN_BACKEND", backend)
    with pytest.raises(exc, match=re.escape(text)):
        call()


def test_boxes_on_another_device_raise():
    if not torch.cuda.is_available():
        meta_rois = ROIS.to("meta")
        with pytest.raises(ValueError, match="device"):
            ops.roi_align(X, meta_rois, 2)
    else:
        with pytest.raises(ValueError, match="device"):
            ops.roi_align(X, ROIS.cuda(), 2)


coord = st.floats(min_value=-40, max_value=60, allow_nan=False, width=32)
box = st.tuples(st.integers(0, 1), coord, coord, coord, coord)


def _fuzz_backend():
    ok, _ = pygen.backend_status("cpu", "cpu")
    return "cpu" if ok else "reference"


@settings(max_examples=60, deadline=None)
@given(boxes=st.lists(box, min_size=0, max_size=6), sr=st.integers(-1, 3), aligned=st.booleans(),
       scale=st.sampled_from([1.0, 0.5, 0.25]), hw=st.tuples(st.integers(1, 9), st.integers(1, 9)))
def test_fuzz_boxes_roi_align_and_pool(boxes, sr, aligned, scale, hw):
    """Arbitrary boxes (any corner order, any size, anywhere) match the reference and never crash."""
    gen = torch.Generator().manual_seed(len(boxes) * 31 + hw[0])
    x = torch.randn(2, 3, *hw, generator=gen)
    rois = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5)
    b = _fuzz_backend()
    out = ops.roi_align(x, rois, (2, 3), scale, sr, aligned, backend=b)
    r64 = ref.roi_align(x.double(), rois.double(), (2, 3), scale, sr, aligned)
    same = ref.roi_align(x, rois, (2, 3), scale, sr, aligned)
    assert_close_to_ref(out, r64, same, what="fuzz roi_align")
    out = ops.roi_pool(x, rois, (2, 3), scale, backend=b)
    assert_close_to_ref(out, ref.roi_pool(x.double(), rois.double(), (2, 3), scale), what="fuzz roi_pool")


@settings(max_examples=40, deadline=None)
@given(boxes=st.lists(box, min_size=1, max_size=6), sr=st.integers(-1, 2),
       hw=st.tuples(st.integers(1, 9), st.integers(1, 9)))
def test_fuzz_boxes_ps_ops(boxes, sr, hw):
    gen = torch.Generator().manual_seed(len(boxes) * 17 + hw[1])
    x = torch.randn(2, 8, *hw, generator=gen)
    rois = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5)
    b = _fuzz_backend()
    out = ops.ps_roi_align(x, rois, 2, 0.5, sr, backend=b)
    same = ref.ps_roi_align(x, rois, (2, 2), 0.5, sr)
    assert_close_to_ref(out, ref.ps_roi_align(x.double(), rois.double(), (2, 2), 0.5, sr), same,
                        what="fuzz ps_roi_align")
    assert torch.isfinite(out).all(), "zero-area boxes must not give NaN"
    out = ops.ps_roi_pool(x, rois, 2, 0.5, backend=b)
    assert_close_to_ref(out, ref.ps_roi_pool(x.double(), rois.double(), (2, 2), 0.5), what="fuzz ps_roi_pool")
