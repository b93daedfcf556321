"""RoI family: every backend against the float64 reference (forward and backward), gradcheck,
adjointness, determinism, multi-scale level assignment, edge cases, opcheck and torch.compile."""

from __future__ import annotations

import pytest
import torch
from helpers import ATOL, assert_close_to_ref, backend_params, dtypes_for, make_input, make_rois

import pygen
from pygen import ops
from pygen.ops import _registry
from pygen.ref import roi as ref

# op name -> (pooled size, channels, positional args after output_size, ref function)
CASES = {
    "roi_align": [
        ((3, 3), 5, dict(spatial_scale=0.5, sampling_ratio=-1, aligned=False)),
        ((2, 3), 5, dict(spatial_scale=0.25, sampling_ratio=2, aligned=True)),
        ((3, 2), 3, dict(spatial_scale=1.0, sampling_ratio=0, aligned=True)),
    ],
    "roi_pool": [((3, 3), 5, dict(spatial_scale=0.5)), ((2, 3), 3, dict(spatial_scale=1.0))],
    "ps_roi_align": [
        ((3, 3), 18, dict(spatial_scale=0.5, sampling_ratio=-1)),
        ((2, 2), 8, dict(spatial_scale=0.25, sampling_ratio=2)),
    ],
    "ps_roi_pool": [((3, 3), 18, dict(spatial_scale=0.5)), ((2, 3), 12, dict(spatial_scale=1.0))],
}
OPS = list(CASES)


def _run(op, x, rois, pooled, kw, backend):
    return getattr(ops, op)(x, rois, pooled, **kw, backend=backend)


def _ref(op, x, rois, pooled, kw):
    return getattr(ref, op)(x, rois, pooled, **kw)


def _problem(op, case, dtype, device, gen, channels_last=False, k=9, hw=(9, 11)):
    pooled, c, kw = case
    x = make_input((2, c, *hw), dtype, device, gen, channels_last)
    rois = make_rois(k, 2, hw[0], hw[1], kw["spatial_scale"], gen, device=device)
    return x, rois, pooled, kw


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_forward_matches_reference(op, device, backend, channels_last, gen):
    for dtype in dtypes_for(backend, device):
        for case in CASES[op]:
            x, rois, pooled, kw = _problem(op, case, dtype, device, gen, channels_last)
            out = _run(op, x, rois, pooled, kw, backend)
            assert out.dtype == dtype and out.device == x.device
            r64 = _ref(op, x.double(), rois.double(), pooled, kw)
            same = _ref(op, x, rois, pooled, kw)
            assert_close_to_ref(out, r64, same, what=f"{op} {backend} {dtype} {kw}")


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("op", OPS)
def test_backward_matches_reference(op, device, backend, gen):
    for dtype in dtypes_for(backend, device):
        for case in CASES[op]:
            x, rois, pooled, kw = _problem(op, case, dtype, device, gen, channels_last=dtype == torch.float16)
            x.requires_grad_(True)
            out = _run(op, x, rois, pooled, kw, backend)
            g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
            (gx,) = torch.autograd.grad(out, x, g)
            x64 = x.detach().double().requires_grad_(True)
            (g64,) = torch.autograd.grad(_ref(op, x64, rois.double(), pooled, kw), x64, g.double())
            xs = x.detach().clone().requires_grad_(True)
            (gs,) = torch.autograd.grad(_ref(op, xs, rois, pooled, kw), xs, g)
            assert gx.dtype == dtype and gx.shape == x.shape
            # gradients sum many terms: allow the half-precision output rounding on top
            assert_close_to_ref(gx, g64, gs, atol=4 * ATOL[dtype], what=f"grad {op} {backend} {dtype} {kw}")


@pytest.mark.parametrize("device,backend", backend_params(kernel_only=True))
@pytest.mark.parametrize("op", OPS)
def test_backward_reads_an_expanded_grad_in_place(op, device, backend, gen, monkeypatch):
    """An expanded grad_out (one [C, PH, PW] block for every RoI: stride 0 over K, as a broadcast
    loss sends) reaches the kernels uncopied, and gives the gradient of its contiguous copy."""
    import importlib

    launchers = importlib.import_module(ops.roi._LAUNCHER_MODULE[backend])
    real = getattr(launchers, f"{op}_bwd")
    seen = []
    monkeypatch.setattr(launchers, f"{op}_bwd", lambda g, *a: (seen.append(g.stride(0)), real(g, *a))[1])
    for case in CASES[op]:
        x, rois, pooled, kw = _problem(op, case, torch.float32, device, gen)
        x.requires_grad_(True)
        out = _run(op, x, rois, pooled, kw, backend)
        g = torch.randn(out.shape[1:], generator=gen).to(device).expand(out.shape)
        (gx,) = torch.autograd.grad(out, x, g)
        (gc,) = torch.autograd.grad(_run(op, x, rois, pooled, kw, backend), x, g.contiguous())
        torch.testing.assert_close(gx, gc, rtol=1e-5, atol=1e-6)
    assert seen[::2] == [0] * len(CASES[op]), seen  # the expanded grads were not copied


def test_backward_copies_a_grad_whose_roi_block_spans_2_31():
    """The Triton kernels' offsets within one RoI's block are 32-bit: a wider block is copied."""
    wide = torch.empty_strided((2, 3, 2, 2), (0, 2**30, 2, 1), device="meta")  # span 2^31 + 3
    assert ops.roi._strided_grad(wide).is_contiguous()
    narrow = torch.empty_strided((2, 3, 2, 2), (0, 2**29, 2, 1), device="meta")
    assert ops.roi._strided_grad(narrow) is narrow


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64(op, backend, gen):
    ok, why = pygen.backend_status(backend, "cpu")
    if not ok:
        pytest.skip(why)
    for case in CASES[op]:
        x, rois, pooled, kw = _problem(op, case, torch.float64, "cpu", gen, k=4, hw=(5, 6))
        # roi_pool is piecewise linear (argmax); random data keeps the max away from ties
        x.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: _run(op, t, rois, pooled, kw, backend), (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("device,backend", backend_params(kernel_only=True))
@pytest.mark.parametrize("op", ["roi_align", "ps_roi_align", "ps_roi_pool"])
def test_backward_is_adjoint_of_forward(op, device, backend, gen):
    """For ops linear in the input, <op(x), g> = <x, op^T g>: checks the backward kernel against the
    forward kernel of the same backend (the float32 stand-in for gradcheck where float64 is absent)."""
    for case in CASES[op]:
        x, rois, pooled, kw = _problem(op, case, torch.float32, device, gen, k=12)
        x.requires_grad_(True)
        out = _run(op, x, rois, pooled, kw, backend)
        g = torch.randn(out.shape, generator=gen).to(device)
        (gx,) = torch.autograd.grad(out, x, g)
        lhs = (out.double() * g.double()).sum()
        rhs = (x.detach().double() * gx.double()).sum()
        assert torch.allclose(lhs, rhs, rtol=1e-4, atol=1e-4), (lhs.item(), rhs.item())


@pytest.mark.parametrize("device,backend", backend_params(kernel_only=True))
@pytest.mark.parametrize("op", OPS + ["multi_scale_roi_align"])
def test_deterministic_backward_is_bitwise_reproducible(op, device, backend, gen):
    if op == "multi_scale_roi_align":
        feats, rois, scales = _pyramid(torch.float32, device, gen)
        f = lambda fs: ops.multi_scale_roi_align(fs, rois, 3, scales, 2, backend=backend)
        x = feats
    else:
        x, rois, pooled, kw = _problem(op, CASES[op][0], torch.float32, device, gen, k=24)
        f = lambda t: _run(op, t, rois, pooled, kw, backend)
        x = [x]
    grads = []
    prev = torch.are_deterministic_algorithms_enabled()
    try:
        for det in (True, True, False):
            torch.use_deterministic_algorithms(det)
            leaves = [t.detach().clone().requires_grad_(True) for t in x]
            out = f(leaves if op == "multi_scale_roi_align" else leaves[0])
            g = torch.linspace(-1, 1, out.numel(), device=device).reshape(out.shape)
            grads.append(torch.autograd.grad(out, leaves, g))
    finally:
        torch.use_deterministic_algorithms(prev)
    for a, b, c in zip(*grads):
        assert torch.equal(a, b), "deterministic backward differs between two runs"
        assert torch.allclose(a, c, rtol=1e-5, atol=1e-5), "deterministic and atomic backward disagree"


def _pyramid(dtype, device, gen, channels_last=False, k=16):
    """A small FPN: image 64x96, levels at strides 4, 8, 16, 32, boxes of all sizes."""
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    feats = [make_input((2, 3, -(-64 // s), -(-96 // s)), dtype, device, gen, channels_last) for s in (4, 8, 16, 32)]
    rois = make_rois(k, 2, 64, 96, 1.0, gen, device=device, special=False)
    # sides off integer multiples, so float32 and float64 agree on ceil(size / bins)
    side = torch.tensor([2.0, 20, 60, 120, 300, 500, 900, 40] * (k // 8 + 1))[:k] + 0.37
    rois[:, 3] = rois[:, 1] + side.to(device)  # spread areas over all levels (canonical 224)
    rois[:, 4] = rois[:, 2] + side.flip(0).to(device)
    return feats, rois, scales


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_multi_scale_roi_align_matches_reference(device, backend, channels_last, gen):
    dtypes, k = dtypes_for(backend, device), 16
    if backend == "triton" and device == "cpu":
        # the interpreter costs ~1 min per dtype here: split the dtypes between the two layouts
        dtypes, k = ([torch.float16] if channels_last else [torch.float32, torch.bfloat16]), 8
    for dtype in dtypes:
        feats, rois, scales = _pyramid(dtype, device, gen, channels_last, k=k)
        for kw in (
            dict(sampling_ratio=2, aligned=False),
            dict(sampling_ratio=-1, aligned=True, canonical_scale=112, canonical_level=3),
        ):
            leaves = [f.detach().clone().requires_grad_(True) for f in feats]
            out = ops.multi_scale_roi_align(leaves, rois, (3, 2), scales, **kw, backend=backend)
            f64 = [f.detach().double().requires_grad_(True) for f in feats]
            r64 = ref.multi_scale_roi_align(f64, rois.double(), (3, 2), scales, **kw)
            same = ref.multi_scale_roi_align(feats, rois, (3, 2), scales, **kw)
            assert_close_to_ref(out, r64, same, what=f"multi_scale {backend} {dtype}")
            g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
            grads = torch.autograd.grad(out, leaves, g, materialize_grads=True)
            grads64 = torch.autograd.grad(r64, f64, g.double(), materialize_grads=True)
            fs = [f.detach().clone().requires_grad_(True) for f in feats]
            gsame = torch.autograd.grad(
                ref.multi_scale_roi_align(fs, rois, (3, 2), scales, **kw), fs, g, materialize_grads=True
            )
            for lvl, (a, b, c) in enumerate(zip(grads, grads64, gsame)):
                assert_close_to_ref(a, b, c, atol=4 * ATOL[dtype], what=f"multi_scale grad level {lvl}")


def test_fpn_levels_follow_the_fpn_rule():
    rois = torch.tensor(
        [
            [0, 0, 0, 10, 10],
            [0, 0, 0, 224, 224],
            [0, 0, 0, 112, 112],
            [0, 0, 0, 448, 448],
            [0, 0, 0, 2000, 2000],
            [0, 5, 5, 5, 5],
            [0, 0, 0, 111.9, 112],
        ]
    )
    lv = ref.fpn_levels(rois, [1 / 4, 1 / 8, 1 / 16, 1 / 32])
    # k = floor(4 + log2(s/224)); clamp to [2, 5]; index = k - 2
    assert lv.tolist() == [0, 2, 1, 3, 3, 0, 0]


@pytest.mark.parametrize("device,backend", backend_params())
def test_multi_scale_equals_per_level_roi_align(device, backend, gen):
    """The one-launch kernel equals roi_align on each RoI's own level (independent of the reference)."""
    feats, rois, scales = _pyramid(torch.float32, device, gen)
    out = ops.multi_scale_roi_align(feats, rois, 2, scales, 2, backend=backend)
    lv = ref.fpn_levels(rois, scales)
    for i in range(rois.shape[0]):
        l = int(lv[i])
        one = ops.roi_align(feats[l], rois[i : i + 1], 2, scales[l], 2, backend=backend)
        torch.testing.assert_close(out[i : i + 1], one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("op", OPS)
def test_edge_cases(op, device, backend, gen):
    pooled, c, kw = CASES[op][0]
    # no boxes at all
    x = make_input((2, c, 6, 7), torch.float32, device, gen).requires_grad_(True)
    empty = torch.zeros((0, 5), device=device)
    out = _run(op, x, empty, pooled, kw, backend)
    assert out.shape[0] == 0
    out.sum().backward()
    assert x.grad is not None and not x.grad.any()
    # degenerate maps (one row / one column / empty) never read out of bounds
    for hw in ((1, 7), (6, 1), (1, 1), (0, 4)):
        x = make_input((2, c, *hw), torch.float32, device, gen)
        rois = make_rois(6, 2, max(hw[0], 1), max(hw[1], 1), kw["spatial_scale"], gen, device=device)
        out = _run(op, x, rois, pooled, kw, backend)
        assert_close_to_ref(out, _ref(op, x.double(), rois.double(), pooled, kw), what=f"{op} map {hw}")
    # list-of-boxes format equals the [K, 5] format
    x = make_input((2, c, 6, 7), torch.float32, device, gen)
    boxes = [make_rois(3, 1, 6, 7, kw["spatial_scale"], gen, device=device)[:, 1:] for _ in range(2)]
    rois = torch.cat([torch.cat([torch.full((3, 1), float(i), device=device), b], 1) for i, b in enumerate(boxes)])
    torch.testing.assert_close(_run(op, x, boxes, pooled, kw, backend), _run(op, x, rois, pooled, kw, backend))


def test_default_backend_prefers_compiled_kernels(monkeypatch):
    monkeypatch.delenv("PYGEN_BACKEND", raising=False)
    expected = "cpu" if pygen.backend_status("cpu", "cpu")[0] else "reference"
    assert pygen._backend.choose("roi_align", torch.device("cpu"), torch.float32) == expected
    monkeypatch.setenv("PYGEN_BACKEND", "reference")
    assert pygen._backend.choose("roi_align", torch.device("cpu"), torch.float32) == "reference"
    monkeypatch.setenv("PYGEN_BACKEND", "cuda")  # unavailable here: falls back (with a warning)
    assert pygen._backend.choose("roi_align", torch.device("cpu"), torch.float32) in ("cpu", "reference")


def test_explicit_unavailable_backend_raises():
    x = torch.randn(1, 4, 5, 5)
    rois = torch.tensor([[0, 0, 0, 3, 3.0]])
    with pytest.raises(RuntimeError, match="cuda"):
        ops.roi_align(x, rois, 2, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        ops.roi_align(x, rois, 2, backend="tpu")
    with pytest.raises(TypeError, match="float64"):
        ops.roi_align(x.double(), rois.double(), 2, backend="triton")


def _opcheck_args(op, dev):
    g = torch.Generator().manual_seed(0)
    if op.startswith("multi_scale_roi_align"):
        feats, rois, scales = _pyramid(torch.float32, dev, g, k=8)
        if "backward" in op:
            return (
                torch.randn(8, 3, 2, 2, device=dev),
                rois,
                2,
                3,
                [f.shape[2] for f in feats],
                [f.shape[3] for f in feats],
                scales,
                2,
                224.0,
                4.0,
                False,
                True,
            )
        return ([f.requires_grad_() for f in feats], rois, 2, 2, scales, 2, 224.0, 4.0, False)
    base = op.split("_backward")[0] if "_backward" in op else op.rsplit("_", 1)[0]
    c = 8 if base.startswith("ps_") else 3
    x = torch.randn(2, c, 7, 6, device=dev, requires_grad="backward" not in op)
    rois = make_rois(5, 2, 7, 6, 0.5, g, device=dev)
    if "backward" not in op:
        return {
            "roi_align": (x, rois, 2, 2, 0.5, 2, True),
            "roi_pool": (x, rois, 2, 2, 0.5),
            "ps_roi_align": (x, rois, 2, 2, 0.5, -1),
            "ps_roi_pool": (x, rois, 2, 2, 0.5),
        }[base]
    grad = torch.randn(5, c // 4 if base.startswith("ps_") else c, 2, 2, device=dev)
    return {
        "roi_align": (grad, rois, 2, c, 7, 6, 0.5, 2, True, False),
        "roi_pool": (grad, torch.zeros(grad.shape, dtype=torch.int32, device=dev), rois, 2, c, 7, 6, False),
        "ps_roi_align": (grad, rois, 2, c, 7, 6, 0.5, -1, False),
        "ps_roi_pool": (grad, rois, 2, c, 7, 6, 0.5, True),
    }[base]


@pytest.mark.parametrize("name", [n for n in _registry.registered() if "roi_" in n])
def test_opcheck(name):
    backend = name.rsplit("_", 1)[1]
    dev = "cuda" if backend == "cuda" else "cpu"
    if backend == "triton" and torch.cuda.is_available():
        dev = "cuda"
    ok, why = pygen.backend_status(backend, dev)
    if not ok:
        pytest.skip(why)
    torch.library.opcheck(_registry.get(name), _opcheck_args(name, dev))


@pytest.mark.parametrize("device,backend", backend_params(kernel_only=True))
def test_torch_compile_fullgraph(device, backend, gen):
    torch._dynamo.reset()
    x = make_input((2, 18, 8, 9), torch.float32, device, gen).requires_grad_(True)
    rois = make_rois(6, 2, 8, 9, 0.5, gen, device=device)

    def head(t):
        a = ops.roi_align(t, rois, 3, 0.5, 2, backend=backend)
        p = ops.ps_roi_pool(t, rois, 3, 0.5, backend=backend)
        return a.relu().sum() + p.sum() + ops.roi_pool(t, rois, 3, 0.5, backend=backend).mean()

    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")
    eager = head(x)
    got = compiled(x)
    torch.testing.assert_close(got, eager)
    (g1,) = torch.autograd.grad(got, x)
    (g2,) = torch.autograd.grad(head(x), x)
    torch.testing.assert_close(g1, g2)


def test_torch_compile_training_batch_sizes_share_a_graph(gen):
    """Training through the RoI ops (input.requires_grad) under torch.compile: a new batch size
    after the first recompile reuses the dynamic graph (the backward schemas took the input's
    sizes as int, which pinned every batch size to a graph of its own)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("aot_eager")

    def head(t, rois):
        ms = ops.multi_scale_roi_align([t, t[:, :, ::2, ::2]], rois, 2, [0.5, 0.25], 2)
        return (ops.roi_align(t, rois, 3, 0.5, 2).sum() + ops.ps_roi_align(t, rois, 3, 0.5, 2).sum()
                + ops.roi_pool(t, rois, 3, 0.5).sum() + ops.ps_roi_pool(t, rois, 3, 0.5).sum() + ms.sum())  # fmt: skip

    f = torch.compile(head, fullgraph=True, backend=cnt)
    frames = []
    for b in (2, 2, 3, 5, 7):
        x = make_input((b, 18, 8, 8), torch.float32, "cpu", gen).requires_grad_(True)
        rois = make_rois(4, b, 8, 8, 0.5, gen)
        before = cnt.frame_count
        f(x, rois).backward()
        frames.append(cnt.frame_count - before)
    assert frames == [1, 0, 1, 0, 0], frames


def test_first_pygen_call_may_be_a_compiled_one():
    """A fresh process whose first pygen call is compiled: the backend choice probed pygen._C with
    importlib while dynamo traced, which it refuses (the native modules now load at import)."""
    import subprocess
    import sys

    code = (
        "import torch, pygen.nn\n"
        "m = pygen.nn.RoIAlign(3, 0.25, 2)\n"
        "rois = torch.tensor([[0, 1.0, 1.0, 20.0, 20.0]])\n"
        "out = torch.compile(m, fullgraph=True, backend='eager')(torch.randn(1, 4, 8, 8), rois)\n"
        "print(tuple(out.shape))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("(1, 4, 3, 3)")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_multi_scale_pools_all_levels_in_one_launch(backend, gen):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU to count kernel launches")
    ok, why = pygen.backend_status(backend, "cuda")
    if not ok:
        pytest.skip(why)
    feats, rois, scales = _pyramid(torch.float32, "cuda", gen, k=64)
    ops.multi_scale_roi_align(feats, rois, 7, scales, 2, backend=backend)  # warm up / compile
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        ops.multi_scale_roi_align(feats, rois, 7, scales, 2, backend=backend)
        torch.cuda.synchronize()
    pooling = [
        e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and "roi" in e.name.lower()
    ]
    assert len(pooling) == 1, pooling


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
@pytest.mark.parametrize("qdtype", [torch.quint8, torch.qint8, torch.qint32])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_quantized_roi_align_matches_torchvision_semantics(qdtype, backend, gen):
    """torchvision's quantized roi_align on CPU: input and (quantized or float) boxes dequantised,
    pooled, the output quantised with the input's scale and zero point; pygen against the float64
    reference of that recipe: at most one quantisation step apart (float32 rounding at ties)."""
    if not pygen.backend_status(backend, "cpu")[0]:
        pytest.skip(f"{backend} unavailable")
    x = torch.rand((2, 3, 10, 12), generator=gen) * 4
    rois = make_rois(6, 2, 10, 12, 1.0, gen, special=False)
    zp = 0 if qdtype == torch.qint8 else 3
    qx = torch.quantize_per_tensor(x, 0.05, zp, qdtype)
    for boxes in (torch.quantize_per_tensor(rois, 0.125, 0, qdtype), rois):
        out = ops.roi_align(qx, boxes, 3, 1.0, 2, backend=backend)
        assert out.dtype == qdtype and out.q_scale() == 0.05 and out.q_zero_point() == zp
        deq_rois = boxes.dequantize() if boxes.is_quantized else boxes
        want = ref.roi_align(qx.dequantize().double(), deq_rois.double(), (3, 3), 1.0, 2, False)
        want_q = torch.quantize_per_tensor(want.float(), 0.05, zp, qdtype)
        diff = (out.int_repr().long() - want_q.int_repr().long()).abs()
        assert diff.max() <= 1 and (diff == 0).float().mean() > 0.95


def test_quantized_roi_align_refuses_other_backends_and_schemes():
    qx = torch.quantize_per_tensor(torch.rand(1, 2, 5, 5), 0.1, 0, torch.quint8)
    with pytest.raises(ValueError, match="quantized input runs on the cpu or reference backend"):
        ops.roi_align(qx, torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]]), 2, backend="triton")


def _bf16_truncated(t32: torch.Tensor) -> torch.Tensor:
    """float32 -> bfloat16 by dropping the low 16 bits (what the Triton interpreter's cast does)."""
    return (t32.contiguous().view(torch.int32) & -65536).view(torch.float32).to(torch.bfloat16)


def _assert_bf16_rounded_like(out, out32, want, want32, what):
    """``out`` (bf16) is ``out32`` (the same kernel's float32 result) rounded to nearest even, bit for
    bit; and it equals ``want`` (another backend's bf16 result, ``want32`` its float32 one) wherever the
    two float32 results agree, within one bf16 ulp where their accumulation order made them differ."""
    rounded = out32.to(torch.bfloat16)
    assert (rounded != _bf16_truncated(out32)).any(), f"{what}: no element tells rounding from truncation"
    assert torch.equal(out, rounded), f"{what}: {int((out != rounded).sum())} elements not rounded to nearest"
    same32 = out32 == want32
    assert torch.equal(out[same32], want[same32]), f"{what}: differs from the other backend's bf16 result"
    a, b = out[~same32].double(), want[~same32].double()
    ulp = torch.finfo(torch.bfloat16).eps * torch.exp2(torch.floor(torch.log2(torch.maximum(a.abs(), b.abs()))))
    assert ((a - b).abs() <= ulp).all(), f"{what}: more than one bf16 ulp from the other backend"


@pytest.mark.parametrize("device,backend", backend_params(kernel_only=True))
@pytest.mark.parametrize("op", OPS + ["multi_scale_roi_align"])
def test_bf16_outputs_round_to_nearest(op, device, backend, gen):
    """bf16 outputs and input gradients are the float32 results rounded to nearest even, as the
    reference (and a GPU's cvt.rn) rounds: under the Triton interpreter a plain fp32 -> bf16 store
    truncates, which this fails on (issue 13). roi_pool's max is an input value, so exact anyway."""
    if op == "multi_scale_roi_align":
        feats, rois, scales = _pyramid(torch.bfloat16, device, gen, k=8)
        f = lambda xs, be: ops.multi_scale_roi_align(xs, rois, (3, 2), scales, 2, backend=be)
    else:
        x, rois, pooled, kw = _problem(op, CASES[op][0], torch.bfloat16, device, gen)
        feats = [x]
        f = lambda xs, be: _run(op, xs[0], rois, pooled, kw, be)
    leaves = [t.detach().clone().requires_grad_(True) for t in feats]
    leaves32 = [t.detach().float().requires_grad_(True) for t in feats]
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # the same summation order in both dtypes on a GPU
    try:
        out, out32 = f(leaves, backend), f(leaves32, backend)
        g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype=torch.bfloat16, device=device)
        grads = torch.autograd.grad(out, leaves, g, materialize_grads=True)
        grads32 = torch.autograd.grad(out32, leaves32, g.float(), materialize_grads=True)
    finally:
        torch.use_deterministic_algorithms(prev)
    want, want32 = f(feats, "reference"), f([t.float() for t in feats], "reference")
    if op != "roi_pool":
        _assert_bf16_rounded_like(out, out32, want, want32, f"{op} {backend} forward")
    else:
        assert torch.equal(out, want) and torch.equal(out.float(), out32), f"{op} {backend} forward"
    # gradients accumulate in float32 and the op rounds them with torch: pinned here, not fixed
    for lvl, (a, a32) in enumerate(zip(grads, grads32)):
        assert torch.equal(a, a32.to(torch.bfloat16)), f"{op} {backend} grad {lvl}"


def _torchvision_max(x: torch.Tensor, rows: range, cols: range) -> tuple[float, int]:
    """torchvision's roi_pool scan of one bin, transcribed: from -FLT_MAX, a value replaces the max
    only when strictly greater (NaN and -inf never do); (max, argmax h*W + w or -1)."""
    best, arg = -torch.finfo(torch.float32).max, -1
    for y in rows:
        for x_ in cols:
            v = float(x[y, x_])
            if v > best:
                best, arg = v, y * x.shape[1] + x_
    return best, arg


@pytest.mark.parametrize("device,backend", backend_params())
def test_roi_pool_max_rule_is_torchvisions(device, backend):
    """Ties, -inf and NaN in the input: the first maximum in row-major order wins, NaN and -inf
    never do, a bin of nothing else gives -FLT_MAX and no gradient (pygen propagated NaN and -inf
    like torch.max, and sent their gradient to the bin's first element)."""
    base = torch.randint(0, 3, (6, 6), generator=torch.Generator().manual_seed(0)).double()
    rois = torch.tensor([[0, 0, 0, 5, 5.0]], device=device)  # 6 x 6 pixels, 2 x 2 bins of 3 x 3
    for case in ("ties", "-inf", "nan", "all-nan bin"):
        x = base.clone()
        if case == "-inf":
            x[:, :3] = float("-inf")
        if case == "nan":
            x[1, 1] = x[4, 5] = float("nan")
        if case == "all-nan bin":
            x[:3, :3] = float("nan")
        for dtype in (torch.float32, torch.float64) if backend != "triton" else (torch.float32,):
            leaf = x.to(device=device, dtype=dtype)[None, None].requires_grad_()
            out = ops.roi_pool(leaf, rois, 2, backend=backend)
            (g,) = torch.autograd.grad(out.sum(), leaf)
            want, hit = [], torch.zeros(36, dtype=torch.float64)
            for i in range(2):
                for j in range(2):
                    v, a = _torchvision_max(x, range(3 * i, 3 * i + 3), range(3 * j, 3 * j + 3))
                    want.append(v)
                    if a >= 0:
                        hit[a] += 1
            assert out.flatten().double().cpu().tolist() == want, (case, dtype)
            assert torch.equal(g.flatten().double().cpu(), hit), (case, dtype)


@pytest.mark.parametrize("device,backend", backend_params())
def test_multi_scale_map_without_boxes_gets_zero_gradient(device, backend):
    """A map no box reaches: gradient zeros, not None (torchvision's; the reference left None),
    and a NaN in it reaches no output (the reference's attachment was sum * 0)."""
    feats = [torch.randn(1, 2, 16, 16, device=device), torch.randn(1, 2, 8, 8, device=device)]
    feats[1][0, 0, 0, 0] = float("nan")
    leaves = [f.requires_grad_() for f in feats]
    rois = torch.tensor([[0, 0, 0, 10, 10.0]], device=device)  # a small box: the finest map
    out = ops.multi_scale_roi_align(leaves, rois, 2, [1 / 4, 1 / 8], 2, backend=backend)
    assert not out.isnan().any()
    g0, g1 = torch.autograd.grad(out.sum(), leaves)
    assert g0 is not None and g0.abs().sum() > 0 and g1 is not None and not g1.any()
