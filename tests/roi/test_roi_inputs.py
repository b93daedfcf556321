"""RoI family: bad input raises a clear error naming the argument before any launch; hypothesis
fuzzing of boxes (inside, overhanging, outside, zero-area, inverted) against the reference."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import assert_close_to_ref
from hypothesis import given, settings, strategies as st

import pygen
from pygen import ops
from pygen.ref import roi as ref

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
    # the kernels take a C int: a larger value would fail in the binding (or allocate 2^40 samples)
    (lambda: ops.roi_align(X, ROIS, 2, 1.0, 2**40), ValueError, "sampling_ratio"),
    (lambda: ops.ps_roi_align(X, ROIS, 2, 1.0, -(2**31) - 1), ValueError, "sampling_ratio"),
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
    # a review fuzzing the native backend: torch's / the binding's errors named none of these
    (lambda: ops.roi_align(X.to_sparse(), ROIS, 2), ValueError, "input must be a dense"),
    (lambda: ops.roi_align(X, ROIS.to_sparse(), 2), ValueError, "boxes must be a dense"),
    (lambda: ops.roi_align(X, ROIS, (2**16, 2**16)), ValueError, "output_size"),  # allocated 4 GiB first
    (lambda: ops.roi_align(X, ROIS, 2, 10**400), ValueError, "spatial_scale"),  # OverflowError
    (
        lambda: ops.multi_scale_roi_align([X, X], ROIS, 2, [0.25, 0.125], canonical_level=float("nan")),
        ValueError,
        "canonical_level",
    ),  # fmt: skip
    (
        lambda: ops.multi_scale_roi_align([X, X], ROIS, 2, [0.25, 0.125], canonical_level=10**400),
        ValueError,
        "canonical_level",
    ),  # fmt: skip
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
@given(
    boxes=st.lists(box, min_size=0, max_size=6),
    sr=st.integers(-1, 3),
    aligned=st.booleans(),
    scale=st.sampled_from([1.0, 0.5, 0.25]),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
)
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
@given(
    boxes=st.lists(box, min_size=1, max_size=6),
    sr=st.integers(-1, 2),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
)
def test_fuzz_boxes_ps_ops(boxes, sr, hw):
    gen = torch.Generator().manual_seed(len(boxes) * 17 + hw[1])
    x = torch.randn(2, 8, *hw, generator=gen)
    rois = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5)
    b = _fuzz_backend()
    out = ops.ps_roi_align(x, rois, 2, 0.5, sr, backend=b)
    same = ref.ps_roi_align(x, rois, (2, 2), 0.5, sr)
    assert_close_to_ref(
        out, ref.ps_roi_align(x.double(), rois.double(), (2, 2), 0.5, sr), same, what="fuzz ps_roi_align"
    )
    assert torch.isfinite(out).all(), "zero-area boxes must not give NaN"
    out = ops.ps_roi_pool(x, rois, 2, 0.5, backend=b)
    assert_close_to_ref(out, ref.ps_roi_pool(x.double(), rois.double(), (2, 2), 0.5), what="fuzz ps_roi_pool")


# ---- boxes that are cheap to reject cost no memory (a broadcast view is never materialised) ----
def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


ROW = torch.tensor([[1, 0.0, 0, 4, 4]])  # a valid RoI of image 1
BIG = 10**9  # as a contiguous float32 [K, 5]: 20 GB


HUGE_BAD = [
    # (boxes, text the message must contain); stride-0 views: no memory behind them
    (lambda: torch.tensor([[2, 0.0, 0, 4, 4]]).expand(BIG, 5), "batch index"),
    (lambda: torch.tensor([[0.5, 0.0, 0, 4, 4]]).expand(BIG, 5), "batch index"),
    (lambda: torch.tensor([[0, float("nan"), 0, 4, 4]]).expand(BIG, 5), "NaN"),
    (lambda: torch.tensor([[0, 1e300, 0, 4, 4]], dtype=torch.float64).expand(BIG, 5), "infinite"),  # inf in f32
    (lambda: [ROW[:, 1:].expand(BIG, 4), torch.tensor([[0, 0, float("inf"), 4.0]]).expand(BIG, 4)], "boxes[1]"),
    (lambda: ROW.expand(2**31, 5), "2^31 - 1"),  # more RoIs than the kernels index
    (lambda: [ROW[:, 1:].expand(2**30, 4)] * 2, "2^31 - 1"),
    (lambda: ROW.long().expand(BIG, 5), "floating-point"),
    (lambda: ROW[:, :4].expand(BIG, 4), "[K, 5]"),
]


@pytest.mark.parametrize("case", range(len(HUGE_BAD)))
@pytest.mark.parametrize("op", ["roi_align", "roi_pool", "ps_roi_align", "multi_scale_roi_align"])
def test_huge_bad_boxes_are_rejected_without_copying(case, op, monkeypatch):
    make, text = HUGE_BAD[case]
    import pygen.ops.roi as roi_ops

    monkeypatch.setattr(roi_ops, "_launcher", lambda b: pytest.fail("a launcher was reached"))
    boxes = make()
    call = {
        "roi_align": lambda: ops.roi_align(X, boxes, 2, 0.5, 2),
        "roi_pool": lambda: ops.roi_pool(X, boxes, 2),
        "ps_roi_align": lambda: ops.ps_roi_align(X, boxes, 2),
        "multi_scale_roi_align": lambda: ops.multi_scale_roi_align([X, X], boxes, 2, [0.5, 0.25]),
    }[op]
    before = _peak_rss_bytes()
    with pytest.raises((ValueError, TypeError), match=re.escape(text)) as info:
        call()
    assert "boxes" in str(info.value)
    assert _peak_rss_bytes() - before < 1 << 30, "validation allocated memory for the broadcast boxes"


def test_huge_valid_broadcast_boxes_pass_validation_without_copying(monkeypatch):
    from pygen.ops import _roi_checks

    def no_copy(self, *a, **k):
        raise AssertionError("validation made the boxes contiguous")

    monkeypatch.setattr(torch.Tensor, "contiguous", no_copy)
    before = _peak_rss_bytes()
    assert _roi_checks.check_boxes("roi_align", ROW.expand(BIG, 5), X) == BIG
    assert _roi_checks.check_boxes("roi_align", [ROW[:, 1:].expand(BIG, 4)] * 2, X) == 2 * BIG
    assert _peak_rss_bytes() - before < 1 << 30


def test_value_checks_cover_every_chunk(monkeypatch):
    """The checks run in chunks of CHECK_ROWS rows: a bad row in the last chunk, and batch-index
    extremes in different chunks, are still found."""
    from pygen.ops import _roi_checks

    monkeypatch.setattr(_roi_checks, "CHECK_ROWS", 4)
    rois = ROIS.repeat(5, 1)  # 10 rows, 3 chunks
    ops.roi_align(X, rois, 2, backend="reference")
    for row, col, value, text in [
        (9, 3, float("inf"), "infinite"),
        (8, 0, 2.0, "[0, 2)"),
        (5, 0, -1.0, "[-1, 1]"),
        (9, 0, 1.5, "integers"),
    ]:
        bad = rois.clone()
        bad[row, col] = value
        with pytest.raises(ValueError, match=re.escape(text)):
            ops.roi_align(X, bad, 2)
    # a column-major (non-contiguous) tensor is read in place, chunk by chunk, too
    col_major = rois.t().contiguous().t()
    col_major[7, 0] = 3.0
    with pytest.raises(ValueError, match=re.escape("got values in [0, 3]")):
        ops.roi_align(X, col_major, 2)


def test_list_boxes_with_empty_entries():
    """Images without boxes are skipped by the value checks; a bad entry is named by its index."""
    empty, one = torch.zeros(0, 4), ROIS[:1, 1:]
    b = _fuzz_backend()
    assert torch.equal(ops.roi_align(X, [empty, one], 2, backend=b), ops.roi_align(X, ROW, 2, backend=b))
    assert ops.roi_align(X, [empty, empty], 2, backend=b).shape == (0, 8, 2, 2)
    with pytest.raises(ValueError, match=re.escape("boxes[1] contain NaN")):
        ops.roi_align(X, [empty, one * float("nan")], 2)


def test_input_sizes_past_int32_are_refused():
    huge = torch.zeros(1, 1, 1, 1).expand(1, 1, 1, 2**31)
    with pytest.raises(ValueError, match=re.escape("input sizes must each be at most")):
        ops.roi_align(huge, ROIS[:1] * 0, 2)


@pytest.mark.parametrize("op", ["roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool"])
def test_channel_expanded_input_whose_gradient_passes_int32_is_refused(op):
    """A view expanded along C spans little, so the span check passed it, but the backward writes a
    contiguous C x H x W gradient per image with 32-bit offsets: 40,000 x 200 x 334 went past 2^31."""
    x = torch.zeros(1, 1, 200, 334).expand(1, 40_000, 200, 334)
    with pytest.raises(ValueError, match="C x H x W = 2672000000"):
        getattr(ops, op)(x, torch.tensor([[0, 1.0, 1.0, 20.0, 20.0]]), 2)


def test_list_boxes_keep_exact_batch_indices_in_low_precision():
    """The batch column of list-form boxes is built in the kernel dtype: in bfloat16 it would turn
    image 257 into 256."""
    x = torch.randn(300, 1, 3, 3)
    boxes = [torch.tensor([[0.0, 0, 2, 2]], dtype=torch.bfloat16)] * 300
    rois = torch.cat([torch.arange(300.0)[:, None], torch.tensor([[0.0, 0, 2, 2]]).expand(300, 4)], 1)
    b = _fuzz_backend()
    assert torch.equal(ops.roi_align(x, boxes, 1, backend=b), ops.roi_align(x, rois, 1, backend=b))


# ---- meta and fake tensors ---------------------------------------------------------------------
def test_meta_tensors_get_a_clear_error():
    with pytest.raises(ValueError, match="roi_align: input is on the meta device"):
        ops.roi_align(X.to("meta"), ROIS.to("meta"), 2)
    with pytest.raises(ValueError, match=re.escape("roi_align: boxes[0] is on the meta device")):
        ops.roi_align(X, [ROIS[:1, 1:].to("meta")], 2)
    with pytest.raises(ValueError, match=re.escape("features[1] is on the meta device")):
        ops.multi_scale_roi_align([X, X.to("meta")], ROIS, 2, [1.0, 0.5])


def test_fake_tensors_run_the_fake_implementations():
    """Shapes without data: under FakeTensorMode the value checks are skipped and a kernel
    backend's registered op runs its fake implementation."""
    from torch._subclasses import FakeTensorMode

    kernel = [b for b in ("cpu", "triton") if pygen.backend_status(b, "cpu")[0]]
    if not kernel:
        pytest.skip("no kernel backend on CPU (pygen._C not built, TRITON_INTERPRET unset)")
    with FakeTensorMode():
        x = torch.randn(2, 8, 6, 7)
        rois = torch.tensor([[0, 0.0, 0, 4, 4], [1, 1, 1, 5, 3], [1, 1, 1, 5, 3]])
        assert ops.roi_align(x, rois, (2, 3), backend=kernel[0]).shape == (3, 8, 2, 3)
        assert ops.ps_roi_pool(x, [rois[:1, 1:], rois[1:, 1:]], 2, backend=kernel[0]).shape == (3, 2, 2, 2)


def test_errors_are_also_the_types_torchvision_raises():
    """Malformed boxes raise what torchvision.ops asserts (AssertionError), PS channel counts not
    divisible by the bins what its C++ check raises (RuntimeError); both keep pygen's message
    and stay ValueError / TypeError."""
    x = torch.randn(1, 8, 5, 5)
    for bad, types in (
        (torch.zeros(3, 4), (AssertionError, ValueError)),
        ([torch.zeros(3, 5)], (AssertionError, ValueError)),
        ("boxes", (AssertionError, TypeError)),
        ([torch.zeros(2, 4), "b"], (AssertionError, TypeError)),
    ):
        for t in types:
            with pytest.raises(t, match="roi_align: boxes"):
                ops.roi_align(x, bad, 2)
    for t in (RuntimeError, ValueError):
        with pytest.raises(t, match=r"input channels \(8\) must be divisible"):
            ops.ps_roi_align(x, torch.zeros(1, 5), 3)
        with pytest.raises(t, match=r"input channels \(8\) must be divisible"):
            ops.ps_roi_pool(x, torch.zeros(1, 5), 3)


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_unchecked_batch_index_truncates_as_torchvision(backend):
    """With value checks off nothing refuses a fractional batch index: every backend truncates it
    as torchvision does, so -0.5 is image 0 (the C++ backend gave zeros for (-1, 0)) and -1 or 2
    (N = 2) pool zeros."""
    x = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    rois = torch.tensor([[-0.5, 0, 0, 4, 4], [0.0, 0, 0, 4, 4], [1.9, 1, 1, 5, 5], [1.0, 1, 1, 5, 5],
                         [-1.0, 0, 0, 4, 4], [2.0, 0, 0, 4, 4]])  # fmt: skip
    with pygen.value_checks(False):
        for op in (ops.roi_align, ops.roi_pool):
            out = op(x, rois, 2, backend=backend)
            assert torch.equal(out[0], out[1]) and torch.equal(out[2], out[3]), (op.__name__, backend)
            assert out[0].abs().sum() > 0 and not out[4:].any(), (op.__name__, backend)
