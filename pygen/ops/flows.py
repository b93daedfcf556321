"""Normalizing-flow ops (RealNVP, Glow, planar/radial/Sylvester flows): every transform returns
``(output, logdet)`` with one log|det Jacobian| per sample, forward and (where one exists in
closed form) inverse. The math and layouts are stated in pygen/ref/flows.py.

    sign, logabsdet = pygen.ops.slogdet(A)                              # like torch.linalg.slogdet
    y, logdet = pygen.ops.affine_coupling(x_b, log_scale_raw, shift, clamp=2.0)
    x_b, ld   = pygen.ops.affine_coupling(y, log_scale_raw, shift, reverse=True)   # ld = -logdet
    y, logdet = pygen.ops.actnorm(x, loc, log_scale)                    # or scale=...
    loc, log_scale = pygen.ops.actnorm_init(x)                          # Glow's data-dependent init
    y, logdet = pygen.ops.inv_conv1x1(x, weight)                        # plain W, slogdet
    y, logdet = pygen.ops.inv_conv1x1_lu(x, perm, lower, upper, diag)   # Glow's LU form

Backends: ``triton`` (kernels/flows/__init__.py, on CUDA, or on CPU under TRITON_INTERPRET=1) and
``reference`` (pygen.ref.flows, pure PyTorch). There is no csrc (``cuda``/``cpu``) backend for
this family. The automatic choice takes ``triton`` on CUDA tensors and ``reference`` on CPU
tensors; float64 always runs on the reference. Log-determinants are float32 (float64 for float64
inputs).

Design notes
------------
* slogdet: the Triton kernel handles d <= 64 (one program per matrix, or per several matrices
  when d is small); larger d falls back to torch.linalg.slogdet. Singular matrices give sign 0
  and logabsdet -inf (never NaN), and a zero gradient (torch gives NaN there).
* inv_conv1x1_lu forms W = P L (U + diag(s)) once per call, together with its log-det
  H*W*sum log|s| (O(C)), in one Triton program (C <= 64; two C x C products, C^3 flops, negligible
  next to the B*H*W*C^2 of applying W), then applies W with the 1x1-conv kernel: two launches
  forward, three backward (dx, dW, and the LU-weight backward). W is not applied as triangular
  factors inside the conv kernel: that would double the conv's FLOPs to save one C x C write.
  The reverse direction builds W^-1 by two triangular solves (PyTorch) and refuses a zero
  diagonal (ValueError; one host synchronisation).
* inv_conv1x1 (plain W) takes its log-det from pygen's batched slogdet and, in reverse, W^-1
  from torch.linalg.inv (which raises for a singular W).
* planar and radial flows run as composed PyTorch ops (O(B*D) work; there is nothing to fuse
  that autograd does not already handle); sylvester computes its M x M determinants with
  pygen's batched slogdet, so it runs the Triton kernel on CUDA when M <= 64.
"""

from __future__ import annotations

import math

import torch

from .. import _backend
from ..ref import flows as ref
from . import _flows_checks as chk, _registry
from ._common_checks import fits_32bit
from ._registry import Backward, OpSpec, register

__all__ = [
    "slogdet",
    "affine_coupling",
    "additive_coupling",
    "actnorm",
    "actnorm_init",
    "inv_conv1x1",
    "inv_conv1x1_lu",
    "planar",
    "radial",
    "sylvester",
]

SLOGDET_MAX_D = 64
LU_MAX_C = 64  # kernels/flows/lu.py forms W in one program up to this size
_SUPPORTED = ("triton", "reference")


def _kernels():
    from pygen.kernels import flows  # imported lazily: triton may be missing

    return flows


def _logdet_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _pick(name: str, t: torch.Tensor, backend: str | None, supported=_SUPPORTED) -> str:
    return _backend.choose_for(name, t, backend, supported)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[B, *] -> [B, N] with unit inner stride (a view when the strides allow it)."""
    b = t.shape[0]
    n = t[0].numel() if b else math.prod(t.shape[1:])
    try:
        v = t.view(b, n)
    except RuntimeError:
        v = t.reshape(b, n)
    if n > 1 and v.stride(1) != 1 or b > 1 and v.stride(0) < n:
        v = v.contiguous()
    return v


def _bcs(t: torch.Tensor) -> torch.Tensor:
    """[B, C, *] -> contiguous [B, C, S]."""
    return t.reshape(t.shape[0], t.shape[1], -1).contiguous()


def _bcs_unit(t: torch.Tensor) -> torch.Tensor:
    """[B, C, *] -> [B, C, S] with unit stride along S (a view when possible)."""
    v = t.reshape(t.shape[0], t.shape[1], -1)
    return v if v.shape[2] <= 1 or v.stride(2) == 1 else v.contiguous()


# ----------------------------------------------------------------------------------------------
# torch.library registration (triton backend); the reference path is plain PyTorch
# ----------------------------------------------------------------------------------------------
def _new_logdet(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0],), dtype=_logdet_dtype(x))


# ---- implementations: (K = kernels/flows/__init__.py, *schema arguments) ------------------------------
def _slogdet_out(a):
    return a.new_empty(a.shape[:1]), a.new_empty(a.shape[:1])


def _slogdet_fwd(K, a):
    sign, logabs = _slogdet_out(a)
    K.slogdet_fwd(a, sign, logabs)
    return sign, logabs


def _slogdet_bwd(K, a, g):
    out = torch.empty(a.shape, dtype=torch.float32, device=a.device)
    K.slogdet_bwd(a, g, out)
    return out


def _affine_out(x, r, t, clamp, reverse, sigmoid):
    return torch.empty_like(x, memory_format=torch.contiguous_format), _new_logdet(x)


def _affine_fwd(K, x, r, t, clamp, reverse, sigmoid):
    y, logdet = _affine_out(x, r, t, clamp, reverse, sigmoid)
    b = x.shape[0]
    if b == 0:
        return y, logdet
    xr, rr, tr = _rows(x), _rows(r), _rows(t)
    n_split = K.coupling_splits(b, xr.shape[1], x.is_cuda)
    if xr.shape[1] == 0:
        return y, logdet.zero_()
    part = logdet.view(b, 1) if n_split == 1 else x.new_empty((b, n_split), dtype=torch.float32)
    K.affine_coupling_fwd(xr, rr, tr, y.view(b, -1), part, clamp, reverse, sigmoid)
    if n_split > 1:
        torch.sum(part, dim=1, out=logdet)
    return y, logdet


def _affine_grad_out(x, r, t, g, gl, clamp, reverse, sigmoid):
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    dr = torch.empty_like(r, memory_format=torch.contiguous_format)
    with_dt = reverse or sigmoid
    dt = torch.empty_like(t, memory_format=torch.contiguous_format) if with_dt else t.new_empty((0,))
    return dx, dr, dt


def _affine_bwd(K, x, r, t, g, gl, clamp, reverse, sigmoid):
    dx, dr, dt = _affine_grad_out(x, r, t, g, gl, clamp, reverse, sigmoid)
    b = x.shape[0]
    if b and x[0].numel():
        K.affine_coupling_bwd(
            _rows(x),
            _rows(r),
            _rows(t),
            _rows(g),
            gl,
            dx.view(b, -1),
            dr.view(b, -1),
            dt.view(b, -1) if (reverse or sigmoid) else None,
            clamp,
            reverse,
            sigmoid,
        )
    return dx, dr, dt


def _affine_grads(c, g, gl):
    dx, dr, dt = c.bwd(*c.saved, g, gl, *c.args)
    clamp, reverse, sigmoid = c.args
    # exp scale, forward direction: d y / d t = 1, so the shift's gradient is grad_y itself
    return {"x": dx, "log_scale_raw": dr, "shift": dt if (reverse or sigmoid) else g}


def _additive_out(x, t, reverse):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _additive_fwd(K, x, t, reverse):
    y = _additive_out(x, t, reverse)
    if x.shape[0]:
        K.additive_coupling_fwd(_rows(x), _rows(t), y.view(x.shape[0], -1), reverse)
    return y


def _actnorm_out(x, loc, p, log_param, reverse):
    return torch.empty_like(x, memory_format=torch.contiguous_format), _new_logdet(x)


def _actnorm_fwd(K, x, loc, p, log_param, reverse):
    y, logdet = _actnorm_out(x, loc, p, log_param, reverse)
    if x.shape[0]:
        K.actnorm_fwd(
            _bcs(x),
            loc.reshape(-1).contiguous(),
            p.reshape(-1).contiguous(),
            y.view(x.shape[0], x.shape[1], -1),
            logdet,
            log_param,
            reverse,
        )
    return y, logdet


def _actnorm_grad_out(x, g, loc, p, gl, log_param, reverse):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(loc), torch.empty_like(p)


def _actnorm_bwd(K, x, g, loc, p, gl, log_param, reverse):
    dx, dloc, dp = _actnorm_grad_out(x, g, loc, p, gl, log_param, reverse)
    x3 = _bcs(x)
    b, c, s = x3.shape
    n_sb = K.actnorm_s_blocks(b * c, s, x.is_cuda)
    pa = x.new_empty((b, n_sb, c), dtype=torch.float32)
    pb = torch.empty_like(pa)
    K.actnorm_bwd(
        x3,
        _bcs(g),
        loc.reshape(-1).contiguous(),
        p.reshape(-1).contiguous(),
        gl,
        dx.view(b, c, s),
        dloc.view(-1),
        dp.view(-1),
        pa,
        pb,
        log_param,
        reverse,
    )
    return dx, dloc, dp


def _actnorm_init_out(x, eps):
    return x.new_empty((x.shape[1],), dtype=torch.float32), x.new_empty((x.shape[1],), dtype=torch.float32)


def _actnorm_init(K, x, eps):
    loc, log_scale = _actnorm_init_out(x, eps)
    K.actnorm_init_fwd(_bcs(x), loc, log_scale, eps)
    return loc, log_scale


def _conv_out(x, w):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _conv_fwd(K, x, w):
    y = _conv_out(x, w)
    if x.numel():
        K.conv1x1_fwd(_bcs_unit(x), w, y.view(x.shape[0], x.shape[1], -1))
    return y


def _conv_grad_out(g, x, w):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w)


def _conv_bwd(K, g, x, w):
    dx, dw = _conv_grad_out(g, x, w)
    g3, x3 = _bcs_unit(g), _bcs_unit(x)
    if x.numel():
        K.conv1x1_fwd(g3, w.t(), dx.view(x.shape[0], x.shape[1], -1))
    splits = K.conv1x1_dw_splits(x.shape[0], x.shape[1], x.is_cuda)
    if splits == 1 and dw.dtype == torch.float32 and dw.is_contiguous():
        K.conv1x1_dw(g3, x3, dw.view(1, *dw.shape))  # written in place, no reduction pass
        return dx, dw
    part = x.new_empty((splits, w.shape[0], w.shape[1]), dtype=torch.float32)
    K.conv1x1_dw(g3, x3, part)
    if dw.dtype == torch.float32:
        torch.sum(part, dim=0, out=dw)
    else:
        dw.copy_(part.sum(0))
    return dx, dw


def _lu_out(perm, lower, upper, diag, scale):
    return torch.empty_like(lower, memory_format=torch.contiguous_format), lower.new_empty((), dtype=torch.float32)


def _lu_fwd(K, perm, lower, upper, diag, scale):
    w, ld = _lu_out(perm, lower, upper, diag, scale)
    K.lu_weight_fwd(perm, lower, upper, diag.contiguous(), w, ld.view(1), scale)
    return w, ld


def _lu_grad_out(perm, lower, upper, diag, gw, gld, scale):
    return (
        torch.empty_like(lower, memory_format=torch.contiguous_format),
        torch.empty_like(upper, memory_format=torch.contiguous_format),
        torch.empty_like(diag),
    )


def _lu_bwd(K, perm, lower, upper, diag, gw, gld, scale):
    dl, du, ds = _lu_grad_out(perm, lower, upper, diag, gw, gld, scale)
    K.lu_weight_bwd(perm, lower, upper, diag.contiguous(), gw, gld.reshape(1), dl, du, ds, scale)
    return dl, du, ds


def _named(names: str, values) -> dict:
    return dict(zip(names.split(), values))


# ---- the ops (triton only; the reference path is plain PyTorch) --------------------------------
SPECS = (
    OpSpec(
        "slogdet",
        "(Tensor A) -> (Tensor, Tensor)",
        _slogdet_fwd,
        _slogdet_out,
        Backward(
            "(Tensor A, Tensor grad_logabsdet) -> Tensor",
            _slogdet_bwd,
            lambda a, g: torch.empty_like(a, dtype=torch.float32, memory_format=torch.contiguous_format),
            save=lambda i, out: ((i.A,), ()),
            grads=lambda c, _g_sign, g_logabs: {"A": c.bwd(c.saved[0], g_logabs).to(c.saved[0].dtype)},
        ),
        non_differentiable=(0,),
    ),
    OpSpec(
        "affine_coupling",
        "(Tensor x, Tensor log_scale_raw, Tensor shift, float? clamp, bool reverse, bool sigmoid) -> (Tensor, Tensor)",
        _affine_fwd,
        _affine_out,
        Backward(
            "(Tensor x, Tensor log_scale_raw, Tensor shift, Tensor grad_y, Tensor grad_logdet, float? clamp, "
            "bool reverse, bool sigmoid) -> (Tensor, Tensor, Tensor)",
            _affine_bwd,
            _affine_grad_out,
            save=lambda i, out: ((i.x, i.log_scale_raw, i.shift), (i.clamp, i.reverse, i.sigmoid)),
            grads=_affine_grads,
        ),
    ),
    OpSpec(
        "additive_coupling",
        "(Tensor x, Tensor shift, bool reverse) -> Tensor",
        _additive_fwd,
        _additive_out,
        Backward(
            None,
            None,
            None,
            save=lambda i, out: ((), (i.reverse,)),
            grads=lambda c, g: {"x": g, "shift": -g if c.args[0] else g},
        ),
    ),
    OpSpec(
        "actnorm",
        "(Tensor x, Tensor loc, Tensor param, bool log_param, bool reverse) -> (Tensor, Tensor)",
        _actnorm_fwd,
        _actnorm_out,
        Backward(
            "(Tensor x, Tensor grad_y, Tensor loc, Tensor param, Tensor grad_logdet, bool log_param, "
            "bool reverse) -> (Tensor, Tensor, Tensor)",
            _actnorm_bwd,
            _actnorm_grad_out,
            save=lambda i, out: ((i.x, i.loc, i.param), (i.log_param, i.reverse)),
            grads=lambda c, g, gl: _named("x loc param", c.bwd(c.saved[0], g, c.saved[1], c.saved[2], gl, *c.args)),
        ),
    ),
    # Glow's data-dependent init: statistics of a batch, nothing to differentiate
    OpSpec("actnorm_init", "(Tensor x, float eps) -> (Tensor, Tensor)", _actnorm_init, _actnorm_init_out),
    OpSpec(
        "conv1x1",
        "(Tensor x, Tensor weight) -> Tensor",
        _conv_fwd,
        _conv_out,
        Backward(
            "(Tensor grad_y, Tensor x, Tensor weight) -> (Tensor, Tensor)",
            _conv_bwd,
            _conv_grad_out,
            save=lambda i, out: ((i.x, i.weight), ()),
            grads=lambda c, g: _named("x weight", c.bwd(g, *c.saved)),
        ),
    ),
    OpSpec(
        "lu_weight",
        "(Tensor perm, Tensor lower, Tensor upper, Tensor diag, float scale) -> (Tensor, Tensor)",
        _lu_fwd,
        _lu_out,
        Backward(
            "(Tensor perm, Tensor lower, Tensor upper, Tensor diag, Tensor grad_w, Tensor grad_logdet, "
            "float scale) -> (Tensor, Tensor, Tensor)",
            _lu_bwd,
            _lu_grad_out,
            save=lambda i, out: ((i.perm, i.lower, i.upper, i.diag), (i.scale,)),
            grads=lambda c, gw, gld: _named("lower upper diag", c.bwd(*c.saved, gw, gld, *c.args)),
        ),
    ),
)

for _spec in SPECS:
    register(_spec, "triton", _kernels)


# ----------------------------------------------------------------------------------------------
# public ops
# ----------------------------------------------------------------------------------------------
def slogdet(A: torch.Tensor, *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign, log|det A|) of every matrix of A [..., d, d], like ``torch.linalg.slogdet``.

    Real float32/float64 only (as torch.linalg.slogdet on CPU). The Triton kernel runs d <= 64;
    larger matrices fall back to torch.linalg.slogdet. Singular matrices: sign 0, -inf.
    Differentiable in A through log|det A| (gradient g * A^{-T}; 0 for a singular matrix on the
    triton backend)."""
    name = "slogdet"
    chk.tensor(name, A, "A", min_dim=2, dtypes=(torch.float32, torch.float64))
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"slogdet: A must be a batch of square matrices [..., d, d], got shape {tuple(A.shape)}")
    b = _pick(name, A, backend)
    d = A.shape[-1]
    if b == "reference" or d > SLOGDET_MAX_D:
        return ref.slogdet(A)
    batch = A.shape[:-2]
    sign, logabs = _registry.get("slogdet_triton")(A.reshape(math.prod(batch), d, d))
    return sign.reshape(batch), logabs.reshape(batch)


def _coupling_args(name, x, others):
    chk.tensor(name, x, "x", min_dim=1, dtypes=chk.FLOAT_DTYPES)
    if x.dim() < 2:
        raise ValueError(f"{name}: x must be [B, *] with at least one feature dim, got shape {tuple(x.shape)}")
    for what, t in others:
        chk.like(name, t, what, x, "x")


def affine_coupling(
    x: torch.Tensor,
    log_scale_raw: torch.Tensor,
    shift: torch.Tensor,
    *,
    reverse: bool = False,
    clamp: float | None = 2.0,
    scale: str = "exp",
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine coupling (RealNVP/Glow) on the transformed half. ``scale="exp"`` (RealNVP):
    s = clamp*tanh(raw/clamp), y = x*exp(s) + shift, logdet = sum(s) per sample; ``reverse=True``
    inverts (x = (y - shift)*exp(-s), logdet = -sum(s)). ``scale="sigmoid"`` (Glow's code):
    m = sigmoid(raw + 2), y = (x + shift)*m, logdet = sum(log m); reverse x = y/m - shift; ``clamp``
    is not used (m is bounded in (0, 1)). One fused pass (scale, shift and the per-sample log-det)
    forward and backward. x, log_scale_raw, shift: [B, *], same shape."""
    name = "affine_coupling"
    _coupling_args(name, x, (("log_scale_raw", log_scale_raw), ("shift", shift)))
    if scale not in ("exp", "sigmoid"):
        raise ValueError(f"{name}: scale must be 'exp' or 'sigmoid', got {scale!r}")
    c = chk.clamp_value(name, clamp) if scale == "exp" else None
    rev = chk.flag(name, reverse, "reverse")
    b = _pick(name, x, backend)
    if b == "reference":
        return ref.affine_coupling(x, log_scale_raw, shift, rev, c, scale)
    return _registry.get("affine_coupling_triton")(x, log_scale_raw, shift, c, rev, scale == "sigmoid")


def additive_coupling(
    x: torch.Tensor, shift: torch.Tensor, *, reverse: bool = False, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive coupling (NICE/Glow): y = x + shift (reverse: x = y - shift); logdet = 0."""
    name = "additive_coupling"
    _coupling_args(name, x, (("shift", shift),))
    rev = chk.flag(name, reverse, "reverse")
    b = _pick(name, x, backend)
    if b == "reference":
        return ref.additive_coupling(x, shift, rev)
    y = _registry.get("additive_coupling_triton")(x, shift, rev)
    return y, x.new_zeros((x.shape[0],), dtype=_logdet_dtype(x))


def actnorm(
    x: torch.Tensor,
    loc: torch.Tensor,
    log_scale: torch.Tensor | None = None,
    *,
    scale: torch.Tensor | None = None,
    reverse: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ActNorm (Glow): y = (x + loc) * m, m = exp(log_scale) or ``scale``, per channel;
    logdet = H*W*sum log|m| for every sample. ``reverse=True``: x = y/m - loc, negated logdet.
    x: [B, C, *] (or [B, C]); loc, log_scale / scale: [C] or [1, C, 1, 1]."""
    name = "actnorm"
    chk.tensor(name, x, "x", min_dim=2, dtypes=chk.FLOAT_DTYPES)
    chk.channel_param(name, loc, "loc", x)
    if (log_scale is None) == (scale is None):
        raise ValueError("actnorm: pass exactly one of log_scale and scale")
    log_param = scale is None
    p = chk.channel_param(name, log_scale if log_param else scale, "log_scale" if log_param else "scale", x)
    rev = chk.flag(name, reverse, "reverse")
    b = _pick(name, x, backend)
    if b == "reference":
        return ref.actnorm(x, loc, log_scale, scale=scale, reverse=rev)
    return _registry.get("actnorm_triton")(x, loc, p, log_param, rev)


def _conv_input(name, x):
    chk.tensor(name, x, "x", min_dim=2, dtypes=chk.FLOAT_DTYPES)
    # the 1x1-conv kernels index within one sample (C x H x W) with 32-bit offsets
    fits_32bit(name, x, "x", dims=range(1, x.dim()), part=" (one sample)")
    return x


def _apply_conv(x, w, b):
    if b == "reference":
        return ref._apply_1x1(x, w)
    return _registry.get("conv1x1_triton")(x, w)


def actnorm_init(
    x: torch.Tensor, eps: float = 1e-6, *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Glow's data-dependent ActNorm initialisation: per channel, loc = -mean and
    log_scale = -log(std + eps) over the batch and spatial positions (std: population), so that
    ``actnorm(x, loc, log_scale)`` has zero mean and unit variance per channel. x: [B, C, *]
    (or [B, C]); returns two [C] tensors in x's dtype. No gradient flows through it (it reads x
    detached, as an initialiser does).

        loc, log_scale = pygen.ops.actnorm_init(x)      # then actnorm(x, loc, log_scale)"""
    name = "actnorm_init"
    chk.tensor(name, x, "x", min_dim=2, dtypes=chk.FLOAT_DTYPES)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"{name}: eps must be a number >= 0, got {eps!r}")
    if x.numel() == 0:
        raise ValueError(f"{name}: x needs at least one value per channel to take statistics of, got {tuple(x.shape)}")
    b = _pick(name, x, backend)
    if b == "reference":
        return ref.actnorm_init(x, float(eps))
    loc, log_scale = _registry.get("actnorm_init_triton")(x.detach(), float(eps))
    return loc.to(x.dtype), log_scale.to(x.dtype)


def inv_conv1x1(
    x: torch.Tensor, weight: torch.Tensor, *, reverse: bool = False, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invertible 1x1 convolution (Glow) with a plain weight: y = W x per pixel,
    logdet = H*W*log|det W| from pygen's slogdet; ``reverse=True`` applies W^-1 (torch.linalg.inv,
    which raises for a singular W) with the negated logdet. x: [B, C, *]; weight: [C, C] or
    [C, C, 1, 1]. A singular W gives logdet = -inf forward."""
    name = "inv_conv1x1"
    _conv_input(name, x)
    w = chk.square(name, weight, "weight", x.shape[1], x)
    rev = chk.flag(name, reverse, "reverse")
    b = _pick(name, x, backend)
    spatial = math.prod(x.shape[2:])
    wl = w.to(_logdet_dtype(x))
    _, lad = slogdet(wl, backend=b)
    ld = ref.per_sample(lad * spatial, x)
    if rev:
        return _apply_conv(x, torch.linalg.inv(wl).to(x.dtype), b), -ld
    return _apply_conv(x, w, b), ld


def inv_conv1x1_lu(
    x: torch.Tensor,
    perm: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    diag: torch.Tensor,
    *,
    reverse: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invertible 1x1 convolution in Glow's LU form W = P @ (tril(L, -1) + I) @ (triu(U, 1) +
    diag(s)); logdet = H*W*sum log|s| (O(C)). perm: [C, C] permutation matrix (used as given);
    lower, upper: [C, C] (only the strictly lower / upper parts are read); diag: [C] signed s.
    A zero in diag gives logdet = -inf forward and a ValueError in reverse."""
    name = "inv_conv1x1_lu"
    _conv_input(name, x)
    c = x.shape[1]
    for what, t in (("perm", perm), ("lower", lower), ("upper", upper)):
        chk.square(name, t, what, c, x)
    chk.like(name, diag, "diag", x, "x", shape=(c,))
    rev = chk.flag(name, reverse, "reverse")
    if rev:  # every backend (the reference returned inf before this check)
        chk.nonzero_diagonal(name, diag)
    b = _pick(name, x, backend)
    if b == "reference":
        return ref.inv_conv1x1_lu(x, perm, lower, upper, diag, rev)
    spatial = math.prod(x.shape[2:])
    if rev:
        ld = ref.per_sample(torch.log(torch.abs(diag.to(_logdet_dtype(x)))).sum() * spatial, x)
        winv = ref.lu_inverse(perm, lower, upper, diag).to(x.dtype)
        return _apply_conv(x, winv, b), -ld
    if c <= LU_MAX_C:
        # W and its log-det in one launch (kernels/flows/lu.py), then the 1x1-conv kernel
        w, ld = _registry.get("lu_weight_triton")(perm, lower, upper, diag, float(spatial))
        return _apply_conv(x, w.to(x.dtype), b), ref.per_sample(ld, x)
    ld = ref.per_sample(torch.log(torch.abs(diag.to(_logdet_dtype(x)))).sum() * spatial, x)
    return _apply_conv(x, ref.lu_weight(perm, lower, upper, diag), b), ld


# ---- planar / radial / Sylvester -----------------------------------------------------------------
def _z(name, z):
    chk.tensor(name, z, "z", min_dim=2, dtypes=chk.FLOAT_DTYPES)
    if z.dim() != 2:
        raise ValueError(f"{name}: z must be [B, D], got shape {tuple(z.shape)}")
    return z


def _reference_only(name: str, fn, z, backend: str | None, *params):
    """A flow with no kernel: validate z [B, D] and each (tensor, its name, its shared shape, "D"
    standing for z's D), then run the reference ``fn(z, *tensors)``."""
    _z(name, z)
    for p, what, shape in params:
        chk.batch_or_shared(name, p, what, z, tuple(z.shape[1] if s == "D" else s for s in shape))
    _pick(name, z, backend, supported=("reference",))
    return fn(z, *(p for p, _, _ in params))


def planar(
    z: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Planar flow f(z) = z + u tanh(w.z + b), logdet = log|1 + (1 - tanh^2) u.w| (forward only;
    pygen.ref.flows.planar_u_hat makes it invertible). u, w: [D] or [B, D]; b: [], [1] or [B]."""
    return _reference_only("planar", ref.planar, z, backend, (u, "u", ("D",)), (w, "w", ("D",)), (b, "b", ()))


def radial(
    z: torch.Tensor, z0: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Radial flow f(z) = z + beta/(alpha + r) (z - z0), r = |z - z0| (forward only).
    z0: [D] or [B, D]; alpha (> 0), beta: [], [1] or [B]."""
    return _reference_only(
        "radial", ref.radial, z, backend, (z0, "z0", ("D",)), (alpha, "alpha", ()), (beta, "beta", ())
    )


def sylvester(
    z: torch.Tensor, A: torch.Tensor, B: torch.Tensor, b: torch.Tensor, *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sylvester flow f(z) = z + A tanh(B z + b), logdet = log|det(I_M + diag(h') B A)| (forward
    only), the M x M determinants from pygen's batched slogdet. A: [D, M] or [B, D, M];
    B: [M, D] or [B, M, D]; b: [M] or [B, M]."""
    name = "sylvester"
    _z(name, z)
    chk.tensor(name, A, "A", dtypes=chk.FLOAT_DTYPES)
    if A.dim() not in (2, 3) or A.shape[-2] != z.shape[1]:
        raise ValueError(f"sylvester: A must be [D, M] or [B, D, M] with D = {z.shape[1]}, got {tuple(A.shape)}")
    m = A.shape[-1]
    chk.batch_or_shared(name, A, "A", z, (z.shape[1], m))
    chk.batch_or_shared(name, B, "B", z, (m, z.shape[1]))
    chk.batch_or_shared(name, b, "b", z, (m,))
    be = _pick(name, z, backend)
    return ref.sylvester(z, A, B, b, slogdet_fn=lambda core: slogdet(core, backend=be))
