"""Flow family ops: every backend (reference, triton) against the float64 reference, log-dets
against torch.linalg.slogdet and autograd Jacobians, inverse(forward(x)) = x with opposite
log-dets, gradients (gradcheck on the reference, float32 comparisons for triton), singular inputs,
opcheck of every registered flow op and torch.compile(fullgraph=True)."""

from __future__ import annotations

import pytest
import torch
from helpers import ATOL, assert_close_to_ref, assert_rounded_bf16, backend_params, dtypes_for

import pygen
from pygen import ops
from pygen.ops import _registry
from pygen.ref import flows as ref

# the flow family has triton and reference backends only (no csrc)
PARAMS = [p for p in backend_params() if p.values[1] in ("triton", "reference")]
KERNEL_PARAMS = [p for p in PARAMS if p.values[1] == "triton"]
FLOW_OPS = ("slogdet", "affine_coupling", "additive_coupling", "actnorm", "actnorm_init", "conv1x1", "lu_weight")


# tiny problems: single-threaded (tests/conftest.py::one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def _rand(shape, gen, dtype=torch.float32, device="cpu", scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)


def _dtypes(backend, device):
    return dtypes_for(backend, device)


def _close(out, ref64, same=None, atol=None, what="", backend="reference"):
    """conftest's Flash-Attention rule, plus one bf16 ulp (2^-7 |ref|) for Triton's interpreter,
    whose float32 -> bfloat16 stores truncate instead of rounding to nearest (measured here:
    -8.371 is stored as -8.3125, not -8.375); GPUs round to nearest and get the plain rule."""
    atol = ATOL[out.dtype] if atol is None else atol
    if out.dtype == torch.bfloat16 and backend == "triton" and pygen._backend.triton_interpreting():
        atol = atol + 2.0**-7 * float(ref64.abs().max()) if ref64.numel() else atol
    assert_close_to_ref(out, ref64, same, atol=atol, what=what)


# ---- slogdet ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", PARAMS)
def test_slogdet_matches_torch(device, backend, gen):
    shapes = [(7, 1, 1), (5, 2, 2), (3, 3, 3), (2, 3, 5, 5), (4, 16, 16), (3, 17, 17), (1, 64, 64), (2, 65, 65)]
    for dtype in (torch.float32, torch.float64) if backend == "reference" else (torch.float32,):
        for shape in shapes:
            a = _rand(shape, gen, dtype, device)
            sign, lad = ops.slogdet(a, backend=backend)
            s64, l64 = torch.linalg.slogdet(a.double())
            same_s, same_l = torch.linalg.slogdet(a)
            assert sign.shape == shape[:-2] and sign.dtype == dtype and lad.dtype == dtype
            assert torch.equal(sign.double().cpu(), s64.cpu()), shape
            # the error of an LU grows with d; keep the Flash-Attention rule with a d-scaled atol
            assert_close_to_ref(lad, l64, same_l, atol=ATOL[dtype] * shape[-1], what=f"slogdet {shape}")


@pytest.mark.parametrize("device,backend", PARAMS)
def test_slogdet_noncontiguous_and_empty(device, backend, gen):
    a = _rand((4, 6, 6), gen, device=device).transpose(-1, -2)
    assert not a.is_contiguous()
    sign, lad = ops.slogdet(a, backend=backend)
    s64, l64 = torch.linalg.slogdet(a.double())
    assert torch.equal(sign.double(), s64)
    assert_close_to_ref(lad, l64, atol=1e-5)
    a = _rand((8, 8, 8), gen, device=device)[::2]  # batch stride 2*64
    assert_close_to_ref(ops.slogdet(a, backend=backend)[1], torch.linalg.slogdet(a.double())[1], atol=1e-4)
    for shape in ((0, 4, 4), (3, 0, 0)):
        e = torch.zeros(shape, device=device)
        s, l = ops.slogdet(e, backend=backend)
        rs, rl = torch.linalg.slogdet(e)
        assert torch.equal(s, rs) and torch.equal(l, rl), shape


def _singular(d, gen):
    zero = torch.zeros(d, d)
    zrow = _rand((d, d), gen)
    zrow[2] = 0
    zcol = _rand((d, d), gen)
    zcol[:, 1] = 0
    dup = _rand((d, d), gen)
    dup[3] = dup[0]
    return torch.stack([zero, zrow, zcol, dup, torch.eye(d)])


@pytest.mark.parametrize("device,backend", PARAMS)
def test_slogdet_singular_is_sign0_minus_inf_never_nan(device, backend, gen):
    a = _singular(5, gen).to(device).requires_grad_(True)
    sign, lad = ops.slogdet(a, backend=backend)
    assert not torch.isnan(lad).any() and not torch.isnan(sign).any()
    assert sign[:3].tolist() == [0, 0, 0] and torch.isneginf(lad[:3]).all()  # exact zero pivots
    # duplicate rows: the kernel's identical updates keep the rows identical -> exact zero pivot;
    # LAPACK may end with a tiny nonzero pivot instead. Either way: singular or hugely negative.
    assert (sign[3] == 0 and torch.isneginf(lad[3])) or lad[3] < -10
    assert sign[4] == 1 and lad[4] == 0
    if backend == "triton":
        assert sign[3] == 0 and torch.isneginf(lad[3])
        g = torch.ones(5, device=device)
        (grad,) = torch.autograd.grad(lad, a, g)
        assert torch.isfinite(grad).all()
        assert not grad[:4].any(), "documented: zero gradient for an exactly singular matrix"
        torch.testing.assert_close(grad[4], torch.eye(5, device=device))


@pytest.mark.parametrize("device,backend", PARAMS)
def test_slogdet_nan_input_is_sign0_nan_as_torch(device, backend, gen):
    """A NaN anywhere gives (0, NaN) as torch.linalg.slogdet (the Triton kernel gave (1, 0.0) for
    [[nan, 1], [1, 1]] under the interpreter and failed on an all-NaN column); the other matrices
    of the batch are untouched."""
    a = _rand((5, 3, 3), gen, device=device)
    a[0, 0, 0] = a[1, 2, 2] = float("nan")
    a[2] = float("nan")
    a[3, :, 0] = 0.0  # singular and finite: still (0, -inf)
    a[3, 1, 1] = float("nan")  # ... unless it holds a NaN too
    sign, lad = ops.slogdet(a, backend=backend)
    want_s, want_l = torch.linalg.slogdet(a.double().cpu())
    assert sign[:4].tolist() == [0, 0, 0, 0] and lad[:4].isnan().all()
    torch.testing.assert_close(sign[4:].cpu().double(), want_s[4:])
    torch.testing.assert_close(lad[4:].cpu().double(), want_l[4:], rtol=1e-5, atol=1e-5)


def _conditioned(shape, gen, max_log10_kappa=5.0, dtype=torch.float32, device="cpu"):
    """Matrices [..., d, d] = s * Q1 diag(sigma) Q2^T whose 2-norm condition numbers kappa are
    log-spaced over [1, 10^max_log10_kappa] across the batch: sigma_i = kappa^(-i/(d-1)) runs from 1
    down to 1/kappa, Q1 and Q2 are random orthogonal (QR of Gaussians: no dominant diagonal, so the
    elimination must pivot) and s = e^N(0,1) a random scale. Plain Gaussian matrices have a
    heavy-tailed, seed-dependent kappa instead (seed 1234 drew a 16x16 one with kappa 5.5e3)."""
    *batch, d, _ = shape
    n = torch.Size(batch).numel()
    q = torch.linalg.qr(torch.randn((2, n, d, d), generator=gen, dtype=torch.float64)).Q
    kappa = torch.logspace(0, max_log10_kappa, n, dtype=torch.float64)
    sigma = kappa[:, None] ** -torch.linspace(0, 1, d, dtype=torch.float64)  # [n, d]
    sigma = sigma * torch.randn(n, 1, generator=gen, dtype=torch.float64).exp()
    a = (q[0] * sigma[:, None, :]) @ q[1].mT
    return a.reshape(shape).to(dtype=dtype, device=device)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_slogdet_backward_matches_reference(device, backend, gen):
    """grad = g * A^{-T} against float64, on matrices with kappa(A) from 1 to 1e5 (_conditioned).

    A float32 inverse is only good to about u * kappa(A) * max|A^{-1}|, and at that level the
    elementwise errors of two equally valid float32 eliminations are uncorrelated: on seed 1234's
    Gaussian 16x16 with kappa 5.5e3 and max|grad| 193 the kernel is off by 0.0154 (so is textbook
    float32 LU + triangular solves), MKL's slogdet backward by 0.0109 on its AVX2 code path and by
    0.0019 on its SSE4.2 / MKL_CBWR=COMPATIBLE path, so the plain Flash-Attention rule (atol 1e-4 d)
    passed or failed with the machine's LAPACK. The atol is therefore the first-order forward-error
    bound of a backward-stable inverse, c_d * u * kappa(A) * max|grad| per matrix, which the kernel
    must meet whatever torch's own float32 result is (the 2|torch32 - ref64| term only adds slack).
    c_d = 4(d + 1): rounding errors add up over the d elimination steps, and a GPU's fp32 division
    (div.full.f32) is off by up to 2 ulp = 4u, so even d = 1 needs 4u. Measured here (CPU, 20 seeds):
    the kernel and MKL stay below 0.15 of this atol. For kappa ~ 1 the atol is a few ulps of
    max|grad|: sign, transposition, pivot or precision errors fail (checked by planting each)."""
    u = torch.finfo(torch.float32).eps / 2
    for shape in ((6, 1, 1), (5, 3, 3), (2, 2, 7, 7), (4, 16, 16)):
        a = _conditioned(shape, gen, device=device).requires_grad_(True)
        g = _rand(shape[:-2], gen, device=device)
        (ga,) = torch.autograd.grad(ops.slogdet(a, backend=backend)[1], a, g)
        a64 = a.detach().double().requires_grad_(True)
        (g64,) = torch.autograd.grad(torch.linalg.slogdet(a64)[1], a64, g.double())
        a32 = a.detach().clone().requires_grad_(True)
        (g32,) = torch.autograd.grad(torch.linalg.slogdet(a32)[1], a32, g)
        assert ga.dtype == a.dtype and ga.shape == a.shape
        # kappa of the float32 matrix actually used (rounding moves sigma_min by ~u * sigma_max)
        kappa = torch.linalg.cond(a.detach().cpu().double())
        grad_max = g64.detach().cpu().abs().amax(dim=(-2, -1))
        atol = (4 * (shape[-1] + 1) * u * kappa * grad_max)[..., None, None]
        assert_close_to_ref(ga, g64, g32, atol=atol, what=f"slogdet grad {shape}")


def test_slogdet_gradcheck_reference(gen):
    a = _rand((3, 4, 4), gen, torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ops.slogdet(t, backend="reference")[1], (a,), fast_mode=True)


# ---- coupling --------------------------------------------------------------------------------------
def _coupling_inputs(shape, dtype, device, gen, view=True):
    """x_b and (raw, t) as Glow's channel chunks of one conditioner output (non-contiguous rows)."""
    x = _rand(shape, gen, dtype, device)
    h = _rand((shape[0], 2 * shape[1], *shape[2:]), gen, dtype, device, scale=1.5)
    raw, t = h.chunk(2, 1) if view else (h[:, 0::2], h[:, 1::2])
    return x, raw, t


COUPLING_SHAPES = [(3, 4, 5, 6), (5, 1), (2, 3), (1, 7, 3, 3), (0, 4, 2, 2)]


@pytest.mark.parametrize("device,backend", PARAMS)
def test_affine_coupling_matches_reference_and_inverts(device, backend, gen):
    for dtype in _dtypes(backend, device):
        for i, shape in enumerate(COUPLING_SHAPES):
            clamp = (2.0, None, 0.5)[i % 3]
            scale = ("exp", "sigmoid")[i % 2]
            x, raw, t = _coupling_inputs(shape, dtype, device, gen, view=i % 2 == 0)
            for rev in (False, True):
                y, ld = ops.affine_coupling(x, raw, t, reverse=rev, clamp=clamp, scale=scale, backend=backend)
                y64, ld64 = ref.affine_coupling(x.double(), raw.double(), t.double(), rev, clamp, scale)
                ys, lds = ref.affine_coupling(x, raw, t, rev, clamp, scale)
                assert y.dtype == dtype and y.shape == x.shape
                assert ld.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
                _close(y, y64, ys, what=f"affine y {backend} {dtype} {shape} rev={rev} {scale}", backend=backend)
                assert_close_to_ref(ld, ld64, lds, atol=ATOL[dtype] * 50, what=f"affine logdet {shape} {scale}")
            if dtype in (torch.float32, torch.float64):
                y, ld = ops.affine_coupling(x, raw, t, clamp=clamp, scale=scale, backend=backend)
                xr, ldr = ops.affine_coupling(y, raw, t, reverse=True, clamp=clamp, scale=scale, backend=backend)
                torch.testing.assert_close(xr, x, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(ldr, -ld)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_affine_coupling_backward(device, backend, gen):
    for dtype in _dtypes(backend, device):
        for shape, clamp, rev, scale in (
            ((3, 4, 5, 6), 2.0, False, "exp"),
            ((6, 2), None, True, "exp"),
            ((2, 3, 4, 4), 1.0, True, "exp"),
            ((3, 2, 3, 3), None, False, "sigmoid"),
            ((4, 5), None, True, "sigmoid"),
        ):
            leaves = [t.requires_grad_(True) for t in (_rand(shape, gen, dtype, device) for _ in range(3))]
            y, ld = ops.affine_coupling(*leaves, reverse=rev, clamp=clamp, scale=scale, backend=backend)
            gy, gl = _rand(y.shape, gen, dtype, device), _rand(ld.shape, gen, ld.dtype, device)
            grads = torch.autograd.grad((y.double() * gy.double()).sum() + (ld.double() * gl.double()).sum(), leaves)
            l64 = [t.detach().double().requires_grad_(True) for t in leaves]
            y64, ld64 = ref.affine_coupling(*l64, rev, clamp, scale)
            g64 = torch.autograd.grad((y64 * gy.double()).sum() + (ld64 * gl.double()).sum(), l64)
            ls = [t.detach().clone().requires_grad_(True) for t in leaves]
            ys, lds = ref.affine_coupling(*ls, rev, clamp, scale)
            gs = torch.autograd.grad((ys.double() * gy.double()).sum() + (lds.double() * gl.double()).sum(), ls)
            for name, a, b, c in zip(("x", "raw", "t"), grads, g64, gs):
                assert a.dtype == dtype
                _close(
                    a, b, c, atol=4 * ATOL[dtype], what=f"affine grad {name} {dtype} rev={rev} {scale}", backend=backend
                )


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_affine_coupling_split_partial_sums(device, backend, gen, monkeypatch):
    """The GPU splits a sample over several programs when the batch is small; force that path."""
    from pygen.kernels import flows as K

    monkeypatch.setattr(K, "coupling_splits", lambda b, n, gpu: 3)
    monkeypatch.setattr(K, "coupling_blocks", lambda b, n, gpu: (2, 16))
    x, raw, t = _coupling_inputs((3, 5, 4, 4), torch.float32, device, gen)  # N = 80: 3 spans of 32
    y, ld = ops.affine_coupling(x, raw, t, backend=backend)
    y64, ld64 = ref.affine_coupling(x.double(), raw.double(), t.double())
    assert_close_to_ref(y, y64, atol=1e-5)
    assert_close_to_ref(ld, ld64, atol=1e-4)


def test_affine_coupling_gradcheck_reference(gen):
    leaves = [_rand((2, 3, 2), gen, torch.float64).requires_grad_(True) for _ in range(3)]
    for rev in (False, True):
        for scale in ("exp", "sigmoid"):
            assert torch.autograd.gradcheck(
                lambda *a: ops.affine_coupling(*a, reverse=rev, clamp=1.5, scale=scale, backend="reference"), leaves
            )


@pytest.mark.parametrize("device,backend", PARAMS)
def test_additive_coupling(device, backend, gen):
    for dtype in _dtypes(backend, device):
        x, _, t = _coupling_inputs((3, 4, 3, 5), dtype, device, gen)
        x.requires_grad_(True)
        t.requires_grad_(True)
        for rev in (False, True):
            y, ld = ops.additive_coupling(x, t, reverse=rev, backend=backend)
            y64, _ = ref.additive_coupling(x.double(), t.double(), rev)
            _close(y, y64, ref.additive_coupling(x, t, rev)[0], what=f"additive {dtype}", backend=backend)
            assert not ld.any() and ld.shape == (3,)
            gx, gt = torch.autograd.grad(y.float().sum(), (x, t))
            assert torch.equal(gx.float(), torch.ones_like(gx.float()))
            assert torch.equal(gt.float(), torch.full_like(gt.float(), -1.0 if rev else 1.0))


# ---- actnorm ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", PARAMS)
def test_actnorm_matches_reference_inverts_and_grads(device, backend, gen):
    for dtype in _dtypes(backend, device):
        for shape, log in (((3, 4, 5, 6), True), ((5, 3), False), ((2, 6, 1, 7), True), ((4, 2, 3, 3), False)):
            c = shape[1]
            x = _rand(shape, gen, dtype, device)
            loc = _rand((c,), gen, dtype, device)
            p = _rand((c,), gen, dtype, device, scale=0.3)
            if not log:
                p = (p.float().exp() * torch.where(torch.arange(c, device=device) % 2 == 0, 1.0, -1.0)).to(dtype)
            if len(shape) == 4 and log:
                loc, p = loc.reshape(1, c, 1, 1), p.reshape(1, c, 1, 1)
            kw = "log_scale" if log else "scale"
            for rev in (False, True):
                leaves = [t.clone().requires_grad_(True) for t in (x, loc, p)]
                y, ld = ops.actnorm(leaves[0], leaves[1], **{kw: leaves[2]}, reverse=rev, backend=backend)
                l64 = [t.detach().double().requires_grad_(True) for t in leaves]
                y64, ld64 = ref.actnorm(l64[0], l64[1], **{kw: l64[2]}, reverse=rev)
                ys, lds = ref.actnorm(x, loc, **{kw: p}, reverse=rev)
                _close(y, y64, ys, what=f"actnorm {dtype} {shape} rev={rev}", backend=backend)
                assert_close_to_ref(ld, ld64, lds, atol=ATOL[dtype] * 10, what=f"actnorm logdet {shape}")
                gy, gl = _rand(y.shape, gen, dtype, device), _rand(ld.shape, gen, ld.dtype, device)
                grads = torch.autograd.grad(
                    (y.double() * gy.double()).sum() + (ld.double() * gl.double()).sum(), leaves
                )
                g64 = torch.autograd.grad((y64 * gy.double()).sum() + (ld64 * gl.double()).sum(), l64)
                for name, a, b in zip(("x", "loc", kw), grads, g64):
                    assert a.shape == b.shape and a.dtype == dtype
                    tol = 4 * ATOL[dtype] * (1 if name == "x" else x.numel())  # parameter grads sum B*H*W terms
                    _close(a, b, atol=tol, what=f"actnorm grad {name} {dtype} rev={rev}", backend=backend)
            if dtype == torch.float32:
                y, ld = ops.actnorm(x, loc, **{kw: p}, backend=backend)
                xr, ldr = ops.actnorm(y, loc, **{kw: p}, reverse=True, backend=backend)
                torch.testing.assert_close(xr, x, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(ldr, -ld)


def test_actnorm_init_normalises(gen):
    x = _rand((16, 3, 4, 4), gen, torch.float64) * torch.tensor([1.0, 3.0, 0.2]).view(1, 3, 1, 1) + 2
    loc, log_scale = ref.actnorm_init(x)
    y, _ = ref.actnorm(x, loc, log_scale)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_actnorm_init_matches_reference(device, backend, gen):
    """Per-channel statistics against the float64 reference on fresh inputs: 4-D data, 2-D data
    (S = 1: the tile runs along the batch), a transposed (non-contiguous) view, a batch of one,
    an offset and spread per channel; one program per channel."""
    for dtype in _dtypes(backend, device):
        for shape, view in (((5, 3, 7, 6), False), ((130, 4), False), ((1, 2, 33, 40), True), ((3, 5, 2), False)):
            c = shape[1]
            spread = torch.linspace(0.2, 3.0, c, dtype=torch.float64).view(1, c, *([1] * (len(shape) - 2)))
            x = (_rand(shape, gen, torch.float64) * spread + 1.5).to(dtype=dtype, device=device)
            if view:
                x = x.transpose(2, 3)
            loc, log_scale = ops.actnorm_init(x, backend=backend)
            assert loc.shape == log_scale.shape == (c,) and loc.dtype == log_scale.dtype == dtype
            r_loc, r_ls = ref.actnorm_init(x.double().cpu())
            s_loc, s_ls = ref.actnorm_init(x.cpu())
            _close(loc.cpu(), r_loc, s_loc, what=f"actnorm_init loc {shape}", backend=backend)
            _close(log_scale.cpu(), r_ls, s_ls, what=f"actnorm_init log_scale {shape}", backend=backend)


def test_actnorm_init_bad_input():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="eps"):
        ops.actnorm_init(x, eps=-1.0)
    with pytest.raises(ValueError, match="at least one value"):
        ops.actnorm_init(torch.randn(0, 3, 4))
    with pytest.raises(ValueError, match="x"):
        ops.actnorm_init(torch.randn(3))


def test_actnorm_module_initialises_through_the_op(monkeypatch, gen):
    """pygen.nn.ActNorm's data-dependent init goes through ops.actnorm_init (its backend)."""
    calls = []
    real = ops.actnorm_init
    monkeypatch.setattr(ops, "actnorm_init", lambda *a, **k: calls.append(k.get("backend")) or real(*a, **k))
    m = pygen.nn.ActNorm(3, backend="reference").train()
    x = _rand((4, 3, 5, 5), gen)
    y, _ = m(x)
    assert calls == ["reference"] and bool(m.initialized)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_actnorm_gradcheck_reference(gen):
    x = _rand((2, 3, 2, 2), gen, torch.float64).requires_grad_(True)
    loc = _rand((3,), gen, torch.float64).requires_grad_(True)
    ls = _rand((3,), gen, torch.float64).requires_grad_(True)
    for rev in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, c: ops.actnorm(a, b, c, reverse=rev, backend="reference"), (x, loc, ls)
        )


# ---- invertible 1x1 convolution ---------------------------------------------------------------------
def _lu_params(c, gen, device, dtype=torch.float32):
    w = torch.linalg.qr(_rand((c, c), gen, torch.float64))[0]
    p, low, up = torch.linalg.lu(w)
    diag = torch.diagonal(up).clone()
    low = low + torch.triu(_rand((c, c), gen, torch.float64))  # ignored part: must not matter
    up = up + torch.tril(_rand((c, c), gen, torch.float64))
    return [t.to(device=device, dtype=dtype) for t in (p, low, up, diag)]


@pytest.mark.parametrize("device,backend", PARAMS)
def test_inv_conv1x1_matches_reference_inverts_and_grads(device, backend, gen):
    for dtype in _dtypes(backend, device):
        full = dtype in (torch.float32, torch.float64)  # half precision: one shape, forward+backward
        for shape in ((3, 4, 5, 3), (2, 20, 3, 1), (4, 3)) if full else ((2, 5, 3, 3),):
            c = shape[1]
            x = _rand(shape, gen, dtype, device)
            w = (torch.linalg.qr(_rand((c, c), gen, torch.float64))[0] * 1.3).to(dtype=dtype, device=device)
            lu = _lu_params(c, gen, device, dtype)
            for form in ("plain", "lu"):
                args = (w,) if form == "plain" else tuple(lu)
                fn = ops.inv_conv1x1 if form == "plain" else ops.inv_conv1x1_lu
                rfn = ref.inv_conv1x1 if form == "plain" else ref.inv_conv1x1_lu
                for rev in (False, True):
                    leaves = [x.clone().requires_grad_(True)] + [a.clone().requires_grad_(True) for a in args]
                    if form == "lu":
                        leaves[1].requires_grad_(False)  # the permutation is a buffer
                    y, ld = fn(*leaves, reverse=rev, backend=backend)
                    l64 = [t.detach().double().requires_grad_(t.requires_grad) for t in leaves]
                    y64, ld64 = rfn(*l64, reverse=rev)
                    ys, lds = rfn(x, *args, reverse=rev)
                    _close(y, y64, ys, atol=4 * ATOL[dtype], what=f"conv {form} {dtype} {shape} {rev}", backend=backend)
                    assert_close_to_ref(ld, ld64, lds, atol=ATOL[dtype] * 10, what=f"conv logdet {form} {shape}")
                    gy, gl = _rand(y.shape, gen, dtype, device), _rand(ld.shape, gen, ld.dtype, device)
                    want = [t for t in leaves if t.requires_grad]
                    grads = torch.autograd.grad(
                        (y.double() * gy.double()).sum() + (ld.double() * gl.double()).sum(), want
                    )
                    w64 = [t for t in l64 if t.requires_grad]
                    g64 = torch.autograd.grad((y64 * gy.double()).sum() + (ld64 * gl.double()).sum(), w64)
                    for i, (a, b) in enumerate(zip(grads, g64)):
                        tol = 8 * ATOL[dtype] * (1 if i == 0 else x.numel() / c)
                        _close(a, b, atol=tol, what=f"conv grad {form} arg{i} {dtype} rev={rev}", backend=backend)
            if dtype == torch.float32:
                for fn, args in ((ops.inv_conv1x1, (w,)), (ops.inv_conv1x1_lu, tuple(lu))):
                    y, ld = fn(x, *args, backend=backend)
                    xr, ldr = fn(y, *args, reverse=True, backend=backend)
                    torch.testing.assert_close(xr, x, rtol=1e-4, atol=1e-4)
                    torch.testing.assert_close(ldr, -ld)


def test_inv_conv1x1_gradcheck_reference(gen):
    x = _rand((2, 3, 2, 1), gen, torch.float64).requires_grad_(True)
    w = (torch.eye(3, dtype=torch.float64) + 0.3 * _rand((3, 3), gen, torch.float64)).requires_grad_(True)
    p, low, up, diag = [t.requires_grad_(i > 0) for i, t in enumerate(_lu_params(3, gen, "cpu", torch.float64))]
    for rev in (False, True):
        assert torch.autograd.gradcheck(lambda a, b: ops.inv_conv1x1(a, b, reverse=rev, backend="reference"), (x, w))
        assert torch.autograd.gradcheck(
            lambda a, lo, u, d: ops.inv_conv1x1_lu(a, p, lo, u, d, reverse=rev, backend="reference"), (x, low, up, diag)
        )


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_lu_weight_kernel(device, backend, gen):
    """W = P L' U' and its scaled log-det in one program, and the backward, for C up to 64 (the
    BC = 64 tile path at C = 48); P taken as given (any matrix)."""
    for c in (5, 48):
        p, low, up, diag = _lu_params(c, gen, device)
        p = p + 0.1 * _rand((c, c), gen, device=device)
        leaves = [t.clone().requires_grad_(True) for t in (low, up, diag)]
        w, ld = _registry.get("lu_weight_triton")(p, *leaves, 7.0)
        l64 = [t.detach().double().requires_grad_(True) for t in leaves]
        w64 = ref.lu_weight(p.double(), *l64)
        ld64 = 7.0 * torch.log(torch.abs(l64[2])).sum()
        assert_close_to_ref(w, w64, atol=1e-5)
        assert_close_to_ref(ld, ld64, atol=1e-4)
        gw = _rand((c, c), gen, device=device)
        grads = torch.autograd.grad((w * gw).sum() + 0.3 * ld, leaves)
        g64 = torch.autograd.grad((w64 * gw.double()).sum() + 0.3 * ld64, l64)
        for name, a, b in zip(("lower", "upper", "diag"), grads, g64):
            assert_close_to_ref(a, b, atol=1e-4, what=f"lu_weight grad {name} C={c}")


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_conv1x1_dw_batch_splits(device, backend, gen, monkeypatch):
    from pygen.kernels import flows as K

    monkeypatch.setattr(K, "conv1x1_dw_splits", lambda b, c, gpu: 2)
    x = _rand((5, 6, 3, 3), gen, device=device)
    w = _rand((6, 6), gen, device=device).requires_grad_(True)
    y, _ = ops.inv_conv1x1(x, w, backend=backend)
    (gw,) = torch.autograd.grad(y.sum(), w)
    w64 = w.detach().double().requires_grad_(True)
    y64, _ = ref.inv_conv1x1(x.double(), w64)
    (g64,) = torch.autograd.grad(y64.sum(), w64)
    assert_close_to_ref(gw, g64, atol=1e-4)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_lu_zero_diagonal_and_singular_weight(device, backend, gen):
    x = _rand((2, 4, 3, 3), gen, device=device)
    p, low, up, diag = _lu_params(4, gen, device)
    diag[2] = 0
    y, ld = ops.inv_conv1x1_lu(x, p, low, up, diag, backend=backend)
    assert torch.isfinite(y).all() and torch.isneginf(ld).all()
    with pytest.raises(ValueError, match="diag"):  # every backend (the reference gave inf, unchecked)
        ops.inv_conv1x1_lu(x, p, low, up, diag, reverse=True, backend=backend)
    w = _rand((4, 4), gen, device=device)
    w[3] = w[1]
    y, ld = ops.inv_conv1x1(x, w, backend=backend)
    assert torch.isfinite(y).all() and not torch.isnan(ld).any()
    assert (torch.isneginf(ld) | (ld < -50)).all()
    with pytest.raises(RuntimeError):  # torch.linalg.inv: singular matrix (torch.linalg.LinAlgError)
        ops.inv_conv1x1(x, torch.zeros(4, 4, device=device), reverse=True, backend=backend)


# ---- log-dets against autograd Jacobians -----------------------------------------------------------
def _jacobian_logdet(fn, x):
    """log|det J| of a per-sample map fn(x_i [1, ...], i), sample by sample (J from
    torch.autograd.functional.jacobian)."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda t: fn(t.reshape(xi.shape), i).reshape(-1), xi.reshape(-1))
        out.append(torch.linalg.slogdet(jac.double())[1])
    return torch.stack(out)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_logdets_equal_autograd_jacobians(device, backend, gen):
    """The kernels' log-dets equal log|det| of the Jacobian autograd computes through their own
    backward kernels (float32 for triton), for every transform, forward and inverse."""
    dt = torch.float64 if backend == "reference" else torch.float32
    tol = 1e-9 if dt == torch.float64 else 2e-4
    n = 2 if backend == "reference" else 1  # Triton: one sample (several are covered elsewhere)
    x = _rand((n, 3, 1, 2), gen, dt, device)
    _, raw, t = _coupling_inputs((n, 3, 1, 2), dt, device, gen)
    loc, ls = _rand((3,), gen, dt, device), _rand((3,), gen, dt, device, scale=0.3)
    w = _rand((3, 3), gen, dt, device)
    lu = _lu_params(3, gen, device, dt)
    cases = {
        "affine": lambda v, i, rev: ops.affine_coupling(v, raw[i], t[i], reverse=rev, clamp=1.5, backend=backend),
        "affine_glow": lambda v, i, rev: ops.affine_coupling(
            v, raw[i], t[i], reverse=rev, scale="sigmoid", backend=backend
        ),
        "actnorm": lambda v, i, rev: ops.actnorm(v, loc, ls, reverse=rev, backend=backend),
        "actnorm_scale": lambda v, i, rev: ops.actnorm(v, loc, scale=-ls.exp(), reverse=rev, backend=backend),
        "conv": lambda v, i, rev: ops.inv_conv1x1(v, w, reverse=rev, backend=backend),
        "conv_lu": lambda v, i, rev: ops.inv_conv1x1_lu(v, *lu, reverse=rev, backend=backend),
    }
    batch = [slice(0, n)]
    for name, f in cases.items():
        for rev in (False, True):
            jac = _jacobian_logdet(lambda v, i: f(v, slice(i, i + 1), rev)[0], x)
            torch.testing.assert_close(
                f(x, batch[0], rev)[1].double(), jac, rtol=tol, atol=tol, msg=f"{name} rev={rev}"
            )
    # planar / radial / Sylvester (forward only), per-sample and shared parameters
    z = _rand((3, 5), gen, dt, device)
    u, wv = _rand((3, 5), gen, dt, device), _rand((5,), gen, dt, device)
    u = ref.planar_u_hat(u, wv.expand(3, 5))
    bias = _rand((), gen, dt, device)
    z0, alpha = _rand((5,), gen, dt, device), _rand((3,), gen, dt, device).abs() + 0.5
    beta = ref.radial_beta_hat(alpha, _rand((3,), gen, dt, device))
    A, Bm, bb = _rand((5, 3), gen, dt, device), _rand((3, 3, 5), gen, dt, device), _rand((3,), gen, dt, device)
    flows = {
        "planar": (
            lambda v, i: ops.planar(v, u[i], wv, bias, backend="reference"),
            ops.planar(z, u, wv, bias, backend="reference")[1],
        ),
        "radial": (
            lambda v, i: ops.radial(v, z0, alpha[i : i + 1], beta[i : i + 1], backend="reference"),
            ops.radial(z, z0, alpha, beta, backend="reference")[1],
        ),
        "sylvester": (
            lambda v, i: ops.sylvester(v, A, Bm[i], bb, backend=backend),
            ops.sylvester(z, A, Bm, bb, backend=backend)[1],
        ),
    }
    for name, (f, ld) in flows.items():
        jac = _jacobian_logdet(lambda v, i: f(v, i)[0], z)
        torch.testing.assert_close(ld.double(), jac, rtol=tol, atol=tol, msg=name)


def test_sylvester_orthogonal_triangular_identity(gen):
    """With A = Q R, B = R~ Q^T the M x M determinant is triangular (van den Berg et al. 2018)."""
    d, m = 6, 4
    q = torch.linalg.qr(_rand((d, d), gen, torch.float64))[0][:, :m]
    r, rt = torch.triu(_rand((m, m), gen, torch.float64)), torch.triu(_rand((m, m), gen, torch.float64))
    z, b = _rand((5, d), gen, torch.float64), _rand((m,), gen, torch.float64)
    f, ld = ops.sylvester(z, q @ r, rt @ q.T, b, backend="reference")
    hp = 1 - torch.tanh(z @ (rt @ q.T).T + b) ** 2
    torch.testing.assert_close(ld, torch.log(torch.abs(1 + hp * torch.diagonal(rt) * torch.diagonal(r))).sum(1))


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_sylvester_triton_matches_reference(device, backend, gen):
    z = _rand((6, 5), gen, device=device)
    A, Bm = _rand((6, 5, 3), gen, device=device), _rand((3, 5), gen, device=device)
    b = _rand((6, 3), gen, device=device)
    f, ld = ops.sylvester(z, A, Bm, b, backend=backend)
    f64, ld64 = ref.sylvester(z.double(), A.double(), Bm.double(), b.double())
    assert_close_to_ref(f, f64, atol=1e-5)
    assert_close_to_ref(ld, ld64, atol=1e-4)


# ---- registration, compile, backend choice ----------------------------------------------------------
def _opcheck_args(name, dev, gen):
    x = _rand((2, 4, 3, 3), gen, device=dev)
    g = _rand((2, 4, 3, 3), gen, device=dev)
    c4 = _rand((4,), gen, device=dev)
    gl = _rand((2,), gen, device=dev)
    w = _rand((4, 4), gen, device=dev)
    a = _rand((3, 5, 5), gen, device=dev)
    table = {
        "slogdet_triton": (a.requires_grad_(),),
        "slogdet_backward_triton": (a.detach(), _rand((3,), gen, device=dev)),
        "affine_coupling_triton": (x.requires_grad_(), g.clone().requires_grad_(), g * 0.5, 2.0, False, False),
        "affine_coupling_backward_triton": (x.detach(), g, g * 0.5, g * 2, gl, None, True, True),
        "additive_coupling_triton": (x.detach().requires_grad_(), g.requires_grad_(), True),
        "actnorm_triton": (
            x.detach().requires_grad_(),
            c4.requires_grad_(),
            (c4 * 0.1).detach().requires_grad_(),
            True,
            False,
        ),
        "actnorm_backward_triton": (x.detach(), g.detach(), c4.detach(), c4.detach() + 2, gl, False, True),
        "actnorm_init_triton": (x.detach(), 1e-6),
        "conv1x1_triton": (x.detach().requires_grad_(), w.requires_grad_()),
        "conv1x1_backward_triton": (g.detach(), x.detach(), w.detach()),
        "lu_weight_triton": (
            torch.eye(4, device=dev)[[2, 0, 3, 1]],
            w.detach().requires_grad_(),
            (w * 2).detach().requires_grad_(),
            c4.detach().requires_grad_(),
            9.0,
        ),
        "lu_weight_backward_triton": (
            torch.eye(4, device=dev)[[2, 0, 3, 1]],
            w.detach(),
            w.detach() * 2,
            c4.detach(),
            g[0, 0, :3, :3].new_ones(4, 4),
            gl[0].detach(),
            9.0,
        ),
    }
    return table[name]


@pytest.mark.parametrize(
    "name", [n for n in _registry.registered() if n.split("_backward")[0].rsplit("_", 1)[0] in FLOW_OPS]
)
def test_opcheck(name, gen):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ok, why = pygen.backend_status("triton", dev)
    if not ok:
        pytest.skip(why)
    torch.library.opcheck(_registry.get(name), _opcheck_args(name, dev, gen))


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_torch_compile_fullgraph(device, backend, gen):
    torch._dynamo.reset()
    x = _rand((2, 4, 3, 3), gen, device=device).requires_grad_(True)
    h = _rand((2, 4, 3, 3), gen, device=device)
    loc, ls = _rand((4,), gen, device=device), _rand((4,), gen, device=device, scale=0.2)
    w = _rand((4, 4), gen, device=device).requires_grad_(True)

    def step(v, weight):
        v, l0 = ops.actnorm(v, loc, ls, backend=backend)
        v, l1 = ops.inv_conv1x1(v, weight, backend=backend)
        a, b = v.chunk(2, 1)
        raw, t = (h[:, :2] * a, h[:, 2:] + a)
        b, l2 = ops.affine_coupling(b, raw, t, backend=backend)
        return (torch.cat([a, b], 1) ** 2).sum() - (l0 + l1 + l2).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got, eager = compiled(x, w), step(x, w)
    torch.testing.assert_close(got, eager)
    g1 = torch.autograd.grad(got, (x, w))
    g2 = torch.autograd.grad(step(x, w), (x, w))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_default_backend_choice(monkeypatch):
    monkeypatch.delenv("PYGEN_BACKEND", raising=False)
    x = torch.randn(2, 3)
    # CPU tensors: the reference (Triton on CPU is the interpreter, a test tool)
    assert pygen._backend.choose("affine_coupling", x.device, x.dtype, None, ("triton", "reference")) == "reference"
    with pytest.raises(ValueError, match="not implemented"):
        ops.affine_coupling(x, x, x, backend="cpu")
    with pytest.raises(TypeError, match="float64"):
        ops.affine_coupling(x.double(), x.double(), x.double(), backend="triton")
    with pytest.raises(ValueError, match="not implemented"):
        ops.planar(x, x[0], x[0], torch.zeros(()), backend="triton")


def test_bf16_stores_round_to_nearest(gen):
    """Every flows kernel that stores a bf16 result rounds it to nearest, as the GPU does, under the
    interpreter too (its own float32 -> bf16 store truncates; kernels/_bf16.py): coupling and ActNorm
    forward and backward, the 1x1 convolution and the LU weight, against the float64 reference."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x, t, r = (_rand((4, 6, 8, 8), gen, torch.bfloat16, dev) for _ in range(3))
    x64, t64, r64 = (a.double().cpu().requires_grad_() for a in (x, t, r))
    y, _ = ops.additive_coupling(x, t, backend="triton")
    assert_rounded_bf16(y, ref.additive_coupling(x64, t64)[0], "additive_coupling")
    x.requires_grad_(), r.requires_grad_(), t.requires_grad_()
    y, _ = ops.affine_coupling(x, r, t, reverse=True, backend="triton")
    r_y = ref.affine_coupling(x64, r64, t64, reverse=True)[0]
    assert_rounded_bf16(y, r_y, "affine_coupling")
    g = _rand(y.shape, gen, torch.bfloat16, dev)
    got = torch.autograd.grad(y, (x, r, t), g)
    want = torch.autograd.grad(r_y, (x64, r64, t64), g.double().cpu())
    for name, a, b in zip(("dx", "dr", "dt"), got, want):
        assert_rounded_bf16(a, b, f"affine_coupling {name}")
    loc, ls = _rand((6,), gen, torch.bfloat16, dev), _rand((6,), gen, torch.bfloat16, dev, 0.5)
    y, _ = ops.actnorm(x.detach(), loc, ls, backend="triton")
    assert_rounded_bf16(y, ref.actnorm(x64.detach(), loc.double().cpu(), ls.double().cpu())[0], "actnorm")
    w = _rand((6, 6), gen, torch.bfloat16, dev)
    y, _ = ops.inv_conv1x1(x.detach(), w, backend="triton")
    assert_rounded_bf16(y, ref.inv_conv1x1(x64.detach(), w.double().cpu())[0], "inv_conv1x1")
    perm = torch.eye(6, dtype=torch.bfloat16, device=dev)[torch.randperm(6, generator=gen)]
    lower, upper, diag = _rand((6, 6), gen, torch.bfloat16, dev), _rand((6, 6), gen, torch.bfloat16, dev), w[0]
    w_lu, _ = _registry.get("lu_weight_triton")(perm, lower, upper, diag, 1.0)
    args64 = (a.double().cpu() for a in (perm, lower, upper, diag))
    assert_rounded_bf16(w_lu, ref.lu_weight(*args64), "lu_weight")
