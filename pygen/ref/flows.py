"""Normalizing-flow transforms and their Jacobian log-determinants in plain PyTorch: the test
oracle (run in float64), the ``reference`` backend, and the readable statement of the math.

Every transform returns ``(output, logdet)`` where ``logdet[b] = log|det d output_b / d input_b|``
(one value per sample). Inverses return the log-determinant of the inverse map, so for every
invertible transform ``logdet_inverse(f(x)) == -logdet_forward(x)``. Log-determinants are
float64 for float64 inputs and float32 otherwise (a bf16 sum over thousands of terms is useless).

Layouts
-------
x, log_scale_raw, shift (couplings) : [B, *] same shape; the log-det sums over every non-batch
                                      dim. For Glow/RealNVP images that is [B, C_b, H, W], the
                                      half x_b that the coupling transforms.
x (actnorm, 1x1 conv)               : [B, C, H, W] (or [B, C]: H*W = 1); S = H*W
loc, log_scale, scale (actnorm)     : C values ([C] or [1, C, 1, 1])
weight (1x1 conv)                   : [C, C] (or [C, C, 1, 1]); y[b, :, h, w] = W x[b, :, h, w]
A (slogdet)                         : [..., d, d]
z (planar, radial, Sylvester)       : [B, D]; parameters shared ([D], ...) or per sample ([B, D])

Formulas
--------
slogdet(A)            = torch.linalg.slogdet(A): (sign, log|det A|); singular -> (0, -inf).
soft clamp            s = c * tanh(r / c) (c = clamp > 0; c = None: s = r). |s| < c bounds the
                      scale to [e^-c, e^c] while keeping d s / d r = 1 - (s/c)^2 > 0 smooth
                      (the variant of Glow/RealNVP implementations such as FrEIA's).
affine coupling       y = x * exp(s) + t,            logdet = sum(s)
  inverse             x = (y - t) * exp(-s),         logdet = -sum(s)
additive coupling     y = x + t (inverse x = y - t), logdet = 0
actnorm (Glow)        y = (x + loc) * m,  m = exp(log_scale) (or m = scale),
                      logdet = H*W * sum_c log|m_c|  (the same for every sample)
  inverse             x = y / m - loc,               logdet = -H*W * sum_c log|m_c|
  data-dependent init loc = -mean_{b,h,w}(x), log_scale = -log(std_{b,h,w}(x) + eps)
invertible 1x1 conv   y = W x per pixel,             logdet = H*W * log|det W|
  LU form             W = P @ L @ (U + diag(s)), L unit lower (only the strictly lower part of
                      the argument is used), U strictly upper, s the signed diagonal:
                      logdet = H*W * sum_c log|s_c|  (P a permutation: |det P| = 1)
  inverse             x = W^-1 y,                    logdet = -H*W * log|det W|
MAF/IAF (triangular)  y = x * exp(alpha) + mu with alpha, mu from an autoregressive net:
                      the Jacobian is triangular, logdet = sum(alpha) (the affine coupling
                      formula without clamp; the inverse gives -sum(alpha))
planar (Rezende & Mohamed 2015)
                      f(z) = z + u * tanh(w.z + b),  psi = (1 - tanh^2(w.z + b)) w
                      logdet = log|1 + u.psi|        (matrix determinant lemma, rank 1)
radial                f(z) = z + beta * h * (z - z0), r = |z - z0|, h = 1 / (alpha + r)
                      logdet = (D - 1) log|1 + beta h| + log|1 + beta h - beta r / (alpha + r)^2|
Sylvester (van den Berg et al. 2018)
                      f(z) = z + A tanh(Bm z + b),   A [D, M], Bm [M, D]
                      logdet = log|det(I_M + diag(1 - tanh^2(Bm z + b)) Bm A)|
                      (Sylvester's determinant identity det(I_D + X Y) = det(I_M + Y X));
                      with A = Q R, Bm = R~ Q^T (R, R~ upper triangular, Q^T Q = I) the M x M
                      matrix is triangular and logdet = sum_i log|1 + h'_i R~_ii R_ii|.
Planar, radial and Sylvester flows have no closed-form inverse; only the forward is defined.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = [
    "slogdet",
    "soft_clamp",
    "affine_coupling",
    "additive_coupling",
    "actnorm",
    "actnorm_init",
    "inv_conv1x1",
    "lu_weight",
    "lu_inverse",
    "inv_conv1x1_lu",
    "maf_logdet",
    "planar",
    "planar_u_hat",
    "radial",
    "radial_beta_hat",
    "sylvester",
    "squeeze2d",
    "unsqueeze2d",
]


def logdet_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _exact(fn):
    """Run ``fn`` (a flow op on x, its first argument) with autocast off for x's device: the ops
    compute in x's dtype whatever the autocast region (as the Triton custom ops do), where autocast
    would run the 1x1 conv's einsum / the LU matmuls in bf16 and hand a bf16 y to the next layer."""

    @functools.wraps(fn)
    def run(x, *args, **kwargs):
        if not torch.is_autocast_enabled(x.device.type):
            return fn(x, *args, **kwargs)
        with torch.autocast(x.device.type, enabled=False):
            return fn(x, *args, **kwargs)

    return run


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


# ---- slogdet --------------------------------------------------------------------------------------
def slogdet(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign, log|det A|) of every [d, d] matrix of A [..., d, d] (torch.linalg.slogdet)."""
    return torch.linalg.slogdet(A)


# ---- couplings ------------------------------------------------------------------------------------
def soft_clamp(raw: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """s = clamp * tanh(raw / clamp); identity when ``clamp`` is None."""
    if clamp is None:
        return raw
    return clamp * torch.tanh(raw / clamp)


GLOW_SCALE_SHIFT = 2.0  # Glow's coupling: scale = sigmoid(raw + 2)


@_exact
def affine_coupling(
    x: torch.Tensor,
    log_scale_raw: torch.Tensor,
    shift: torch.Tensor,
    reverse: bool = False,
    clamp: float | None = 2.0,
    scale: str = "exp",
):
    """Affine coupling on the transformed half x_b, (y, logdet).
    scale="exp" (RealNVP): y = x*exp(s) + t, logdet = sum(s), s = soft_clamp(raw); reverse
    x = (y - t)*exp(-s), logdet = -sum(s).
    scale="sigmoid" (Glow's code): m = sigmoid(raw + 2), y = (x + t)*m, logdet = sum(log m);
    reverse x = y/m - t, logdet = -sum(log m); ``clamp`` does not apply (m is bounded)."""
    if scale == "sigmoid":
        z = log_scale_raw + GLOW_SCALE_SHIFT
        ld = _flat(F.logsigmoid(z)).to(logdet_dtype(x)).sum(1)
        m = torch.sigmoid(z)
        if reverse:
            return x / m - shift, -ld
        return (x + shift) * m, ld
    s = soft_clamp(log_scale_raw, clamp)
    ld = _flat(s).to(logdet_dtype(x)).sum(1)
    if reverse:
        return (x - shift) * torch.exp(-s), -ld
    return x * torch.exp(s) + shift, ld


@_exact
def additive_coupling(x: torch.Tensor, shift: torch.Tensor, reverse: bool = False):
    """Additive coupling (NICE): y = x + t (reverse: x = y - t); logdet = 0."""
    y = x - shift if reverse else x + shift
    return y, x.new_zeros(x.shape[0], dtype=logdet_dtype(x))


# ---- actnorm --------------------------------------------------------------------------------------
def _spatial(x: torch.Tensor) -> int:
    return math.prod(x.shape[2:])


def per_sample(ld: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The one log-det of a data-independent layer as [B], a tensor of its own: an expanded view
    (stride 0) would refuse ``logdet += ...``, which flow code writes (nflows' layers allow it)."""
    return ld.expand(x.shape[0]).clone()


def _per_channel(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return p.reshape(1, -1, *([1] * (x.dim() - 2)))


@_exact
def actnorm(
    x: torch.Tensor,
    loc: torch.Tensor,
    log_scale: torch.Tensor | None = None,
    *,
    scale: torch.Tensor | None = None,
    reverse: bool = False,
):
    """ActNorm: y = (x + loc) * m with m = exp(log_scale) (or ``scale``); logdet = H*W*sum log|m|
    for every sample (reverse: x = y / m - loc and the negated logdet)."""
    if (log_scale is None) == (scale is None):
        raise ValueError("actnorm: pass exactly one of log_scale and scale")
    lm = log_scale if scale is None else torch.log(torch.abs(scale))
    ld = per_sample(lm.reshape(-1).to(logdet_dtype(x)).sum() * _spatial(x), x)
    # float32 for 16-bit x, rounded once (the kernels' rule): exp(log_scale) of a zero-variance
    # channel (-log 1e-6 = 13.8) overflows float16, and inf * 0 would make the channel NaN
    acc = logdet_dtype(x)
    xa, loc_ = x.to(acc), _per_channel(loc, x).to(acc)
    if scale is None:
        ls = _per_channel(log_scale, x).to(acc)
        y = xa * torch.exp(-ls) - loc_ if reverse else (xa + loc_) * torch.exp(ls)
    else:
        m = _per_channel(scale, x).to(acc)
        y = xa / m - loc_ if reverse else (xa + loc_) * m
    return y.to(x.dtype), -ld if reverse else ld


def actnorm_init(x: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Data-dependent initialisation (Glow): per-channel (loc, log_scale), each [C], such that
    actnorm(x, loc, log_scale) has zero mean and unit variance per channel over (B, H, W)."""
    c = x.shape[1]
    flat = x.detach().transpose(0, 1).reshape(c, -1)
    mean = flat.mean(1)
    std = flat.std(1, unbiased=False)
    return -mean, -torch.log(std + eps)


# ---- invertible 1x1 convolution ---------------------------------------------------------------------
@_exact
def _apply_1x1(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.einsum("oi,bi...->bo...", w.to(x.dtype), x)


@_exact
def inv_conv1x1(x: torch.Tensor, weight: torch.Tensor, reverse: bool = False):
    """Invertible 1x1 convolution with a plain weight [C, C]: y = W x per pixel,
    logdet = H*W*log|det W| (reverse: W^-1 and the negated logdet)."""
    w = weight.reshape(weight.shape[0], weight.shape[1])
    _, lad = torch.linalg.slogdet(w.to(logdet_dtype(x)))
    ld = per_sample(lad * _spatial(x), x)
    if reverse:
        return _apply_1x1(x, torch.linalg.inv(w.to(logdet_dtype(x)))), -ld
    return _apply_1x1(x, w), ld


@_exact
def lu_weight(perm: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
    """W = P @ (tril(L, -1) + I) @ (triu(U, 1) + diag(s))."""
    eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
    lo = torch.tril(lower, -1) + eye
    up = torch.triu(upper, 1) + torch.diag(diag)
    return perm.to(lower.dtype) @ lo @ up


@_exact
def lu_inverse(perm: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
    """W^-1 = (U + diag(s))^-1 L^-1 P^T by two triangular solves, in float32 (float64 for
    float64 parameters; triangular solves have no half-precision kernels)."""
    dt = logdet_dtype(lower)
    c = lower.shape[0]
    lo = torch.tril(lower.to(dt), -1) + torch.eye(c, dtype=dt, device=lower.device)
    up = torch.triu(upper.to(dt), 1) + torch.diag(diag.to(dt))
    return torch.linalg.solve_triangular(
        up, torch.linalg.solve_triangular(lo, perm.to(dt).T, upper=False, unitriangular=True), upper=True
    )


@_exact
def inv_conv1x1_lu(
    x: torch.Tensor,
    perm: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    diag: torch.Tensor,
    reverse: bool = False,
):
    """Invertible 1x1 convolution in Glow's LU form; logdet = H*W*sum log|s| (O(C))."""
    ld = per_sample(torch.log(torch.abs(diag.to(logdet_dtype(x)))).sum() * _spatial(x), x)
    if reverse:
        winv = lu_inverse(perm, lower, upper, diag)
        return _apply_1x1(x, winv), -ld
    return _apply_1x1(x, lu_weight(perm, lower, upper, diag)), ld


# ---- autoregressive (MAF / IAF) ------------------------------------------------------------------
def maf_logdet(log_scale: torch.Tensor) -> torch.Tensor:
    """Triangular Jacobian of y = x*exp(alpha) + mu: logdet = sum(alpha) per sample."""
    return _flat(log_scale).to(logdet_dtype(log_scale)).sum(1)


# ---- planar / radial / Sylvester ---------------------------------------------------------------------
def _batched(p: torch.Tensor, batch: int, dims: int) -> torch.Tensor:
    """A shared parameter of ``dims`` dims -> add a batch axis (broadcast) if it lacks one."""
    return p.unsqueeze(0).expand(batch, *p.shape) if p.dim() == dims else p


def planar_u_hat(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Rezende & Mohamed (2015), appendix A: u_hat = u + (m(w.u) - w.u) w/|w|^2 with
    m(a) = -1 + softplus(a), which makes w.u_hat >= -1 (the flow invertible)."""
    wu = (w * u).sum(-1, keepdim=True)
    return u + (F.softplus(wu) - 1 - wu) * w / (w * w).sum(-1, keepdim=True)


@_exact
def planar(z: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    """Planar flow: (f(z), logdet). u, w: [D] or [B, D]; b: [] / [1] or [B]."""
    n, d = z.shape
    u, w = _batched(u, n, 1), _batched(w, n, 1)
    b = b.reshape(-1).expand(n) if b.numel() == 1 else b.reshape(n)
    a = (w * z).sum(-1) + b
    h = torch.tanh(a)
    f = z + u * h.unsqueeze(-1)
    psi_u = (1 - h * h) * (w * u).sum(-1)
    return f, torch.log(torch.abs(1 + psi_u)).to(logdet_dtype(z))


def radial_beta_hat(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """beta_hat = -alpha + softplus(beta) >= -alpha (the radial flow is then invertible)."""
    return -alpha + F.softplus(beta)


@_exact
def radial(z: torch.Tensor, z0: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor):
    """Radial flow: (f(z), logdet). z0: [D] or [B, D]; alpha (> 0), beta: [] / [1] or [B]."""
    n, d = z.shape
    z0 = _batched(z0, n, 1)
    alpha = alpha.reshape(-1).expand(n) if alpha.numel() == 1 else alpha.reshape(n)
    beta = beta.reshape(-1).expand(n) if beta.numel() == 1 else beta.reshape(n)
    diff = z - z0
    r = torch.sqrt((diff * diff).sum(-1))
    h = 1 / (alpha + r)
    bh = beta * h
    f = z + bh.unsqueeze(-1) * diff
    ld = (d - 1) * torch.log(torch.abs(1 + bh)) + torch.log(torch.abs(1 + bh - beta * r * h * h))
    return f, ld.to(logdet_dtype(z))


@_exact
def sylvester(z: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor, b: torch.Tensor, *, slogdet_fn=torch.linalg.slogdet):
    """Sylvester flow: (f(z), logdet). A: [D, M] or [B, D, M]; Bm: [M, D] or [B, M, D];
    b: [M] or [B, M]. ``slogdet_fn`` computes the batched M x M determinants (pygen.ops passes
    its own)."""
    n, d = z.shape
    A, Bm, b = _batched(A, n, 2), _batched(Bm, n, 2), _batched(b, n, 1)
    a = torch.einsum("bmd,bd->bm", Bm, z) + b
    h = torch.tanh(a)
    f = z + torch.einsum("bdm,bm->bd", A, h)
    m = A.shape[-1]
    core = torch.eye(m, dtype=z.dtype, device=z.device) + (1 - h * h).unsqueeze(-1) * (Bm @ A)
    return f, slogdet_fn(core)[1].to(logdet_dtype(z))


# ---- reshapes used by the multi-scale models ------------------------------------------------------
def squeeze2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """[B, C, H, W] -> [B, C*f*f, H/f, W/f] (channel index c*f*f + i*f + j for sub-pixel (i, j))."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // factor, factor, w // factor, factor)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * factor * factor, h // factor, w // factor)


def unsqueeze2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Inverse of squeeze2d."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // (factor * factor), factor, factor, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c // (factor * factor), h * factor, w * factor)
