"""Masked autoregressive matmul (MADE / MAF / IAF layers).

    y = pygen.ops.masked_linear(x, weight, bias, in_degrees, out_degrees, strict=False,
                                activation="relu")
    y = pygen.ops.masked_linear(x, weight, bias, mask=mask)        # explicit [O, I] 0/1 mask

y = act(x . (W * M)^T + b) with M[o, i] = out_deg[o] >= in_deg[i] (> when ``strict``, MADE's
output layer); act in None / "none", "relu", "elu", "tanh", "gelu". x is [..., I], weight
[O, I], bias [O] or None, degrees 1-D integer tensors; the result is [..., O] in x's dtype.
Differentiable in x, weight and bias (dW is masked to the same pattern). The math is stated in
pygen/ref/made.py.

An explicit mask (nflows / pyro / zuko style, bool or 0/1 numbers) is reduced to degrees when its
rows are nested (every MADE mask is), and runs the degree kernel; any other 0/1 mask runs the
plain masked-matmul kernel. Reducing a mask reads it (one host synchronisation per call; the
pygen.nn.MaskedLinear module caches the result); under torch.compile, CUDA graph capture or with
value checks off (pygen.set_value_checks(False) / PYGEN_VALUE_CHECKS=0) the mask path always uses
the plain kernel (same result, no tile skipping).

Backends: ``triton`` (kernels/made/__init__.py, on CUDA, or on CPU under TRITON_INTERPRET=1) and
``reference`` (pygen.ref.made). There is no csrc backend for this family. The automatic choice
takes ``triton`` on CUDA tensors and ``reference`` on CPU tensors; float64 runs on the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .. import _backend
from ..ref import made as ref
from . import _made_checks as chk, _registry
from ._common_checks import fits_32bit
from ._registry import Backward, OpSpec, register

__all__ = [
    "masked_linear",
    "masked_linear_plain",
    "masked_linear_bits",
    "pack_bits",
    "made_affine_forward",
    "made_sample",
    "sort_hidden_units",
]

_SUPPORTED = ("triton", "reference")


def _kernels():
    from pygen.kernels import made  # imported lazily: triton may be missing

    return made


def _pick(name: str, t: torch.Tensor, backend: str | None) -> str:
    return _backend.choose_for(name, t, backend, _SUPPORTED)


def _triton_spans(name: str, x2: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None) -> None:
    """The kernels take 64-bit row bases of x and 32-bit offsets within a row of x, within the
    weight and within the mask: refuse what those cannot reach."""
    fits_32bit(name, x2, "x", dims=range(1, x2.dim()), part=" (one row)")
    fits_32bit(name, weight, "weight")
    if mask is not None:
        fits_32bit(name, mask, "mask")


# ---- allocation shared by the real and the fake implementations --------------------------------
def _new_fwd(x: torch.Tensor, weight: torch.Tensor, act: str):
    m, n = x.shape[0], weight.shape[0]
    return x.new_empty((m, n)), x.new_empty((m, n) if act == "gelu" else (0,))


def _new_bwd(x: torch.Tensor, weight: torch.Tensor, need_x: bool, need_w: bool, need_b: bool):
    m, k = x.shape
    n = weight.shape[0]
    return (
        x.new_empty((m, k) if need_x else (0,)),
        weight.new_empty((n, k) if need_w else (0,)),
        weight.new_empty((n,) if need_b else (0,)),
    )


def _act_saved(out: tuple[torch.Tensor, torch.Tensor], act: str) -> torch.Tensor:
    """What the backward keeps of the forward's (y, z): y for relu / elu / tanh (their derivative
    reads it), z otherwise (gelu: the pre-activation; no activation: the empty z, so that callers
    may update y in place, as nflows' MADE does with its context term)."""
    return out[0] if act in ("relu", "elu", "tanh") else out[1]


def _act_grad(grad: torch.Tensor, saved: torch.Tensor, act: str) -> torch.Tensor:
    """dy * act'(saved) in float32 (used for the size-0 edges and for db alone)."""
    g = grad.float()
    s = saved.float()
    if act == "relu":
        return torch.where(s > 0, g, torch.zeros_like(g))
    if act == "elu":
        return torch.where(s > 0, g, g * (s + 1))
    if act == "tanh":
        return g * (1 - s * s)
    if act == "gelu":
        cdf = 0.5 * (1 + torch.erf(s * 0.7071067811865476))
        return g * (cdf + s * torch.exp(-0.5 * s * s) * 0.3989422804014327)
    return g


# ---- masked_linear: implementations (K = kernels/made/__init__.py, *schema arguments) --------------------
def _masked_linear_fwd(K, x, weight, bias, in_deg, out_deg, mask, strict, act):
    y, z = _new_fwd(x, weight, act)
    m, k = x.shape
    n = weight.shape[0]
    if m == 0 or n == 0:
        return y, z
    if k == 0:
        pre = (bias.float() if bias is not None else x.new_zeros((n,), dtype=torch.float32)).expand(m, n)
        y.copy_(ref.apply_activation(pre, act))
        if act == "gelu":
            z.copy_(pre)
        return y, z
    cfg = K.config("fwd", x.dtype)
    zz = z if act == "gelu" else None
    if mask is not None:
        K.masked_matmul_fwd(x, weight, bias, mask.view(torch.uint8), y, zz, act, cfg)
        return y, z
    t, j = K.plan_shape("fwd", n, k, cfg)
    plan = torch.empty((t, j), dtype=torch.int32, device=x.device)
    counts = torch.empty((t, 2), dtype=torch.int32, device=x.device)
    K.made_plan(out_deg, in_deg, plan, counts, strict, True, cfg.block_n, cfg.block_k)
    K.masked_linear_fwd(x, weight, bias, in_deg, out_deg, plan, counts, y, zz, strict, act, cfg)
    return y, z


def _masked_linear_bwd(K, grad, saved, x, weight, in_deg, out_deg, mask, strict, act, need_x, need_w, need_b):
    dx, dw, db = _new_bwd(x, weight, need_x, need_w, need_b)
    m, k = x.shape
    n = weight.shape[0]
    grad = grad.contiguous()
    if m == 0 or n == 0 or k == 0:
        for t in (dx, dw):
            t.zero_()
        if need_b:
            db.copy_(_act_grad(grad, saved, act).sum(0) if m else torch.zeros_like(db))
        return dx, dw, db
    s = saved if act != "none" else None
    if need_x:
        cfg = K.config("dx", x.dtype)
        if mask is not None:
            K.masked_matmul_dx(grad, s, weight, mask.view(torch.uint8), dx, act, cfg)
        else:
            t, j = K.plan_shape("dx", n, k, cfg)
            plan = torch.empty((t, j), dtype=torch.int32, device=x.device)
            counts = torch.empty((t, 2), dtype=torch.int32, device=x.device)
            K.made_plan(in_deg, out_deg, plan, counts, strict, False, cfg.block_n, cfg.block_k)
            K.masked_linear_dx(grad, s, weight, in_deg, out_deg, plan, counts, dx, strict, act, cfg)
    if need_w:
        cfg = K.config("dw", x.dtype)
        dbb = db if need_b else None
        if mask is not None:
            K.masked_matmul_dw(grad, s, x, mask.view(torch.uint8), dw, dbb, act, cfg)
        else:
            K.masked_linear_dw(grad, s, x, in_deg, out_deg, dw, dbb, strict, act, cfg)
    elif need_b:
        db.copy_(_act_grad(grad, saved, act).sum(0))
    return dx, dw, db


def _masked_linear_grads(c, gy, _gz):
    x, weight, in_deg, out_deg, mask, saved = c.saved
    strict, act, has_bias = c.args
    need_x, need_w, need_b = c.needs.x, c.needs.weight, has_bias and c.needs.bias
    dx, dw, db = c.bwd(gy, saved, x, weight, in_deg, out_deg, mask, strict, act, need_x, need_w, need_b)
    return {"x": dx if need_x else None, "weight": dw if need_w else None, "bias": db if need_b else None}


MASKED_LINEAR = OpSpec(
    "masked_linear",
    "(Tensor x, Tensor weight, Tensor? bias, Tensor? in_degrees, Tensor? out_degrees, Tensor? mask, "
    "bool strict, str activation) -> (Tensor, Tensor)",
    _masked_linear_fwd,
    lambda x, weight, bias, i, o, mask, strict, act: _new_fwd(x, weight, act),
    Backward(
        "(Tensor grad, Tensor saved, Tensor x, Tensor weight, Tensor? in_degrees, Tensor? out_degrees, "
        "Tensor? mask, bool strict, str activation, bool need_x, bool need_weight, bool need_bias) "
        "-> (Tensor, Tensor, Tensor)",
        _masked_linear_bwd,
        lambda grad, saved, x, weight, i, o, mask, strict, act, nx, nw, nb: _new_bwd(x, weight, nx, nw, nb),
        save=lambda i, out: (
            (i.x, i.weight, i.in_degrees, i.out_degrees, i.mask, _act_saved(out, i.activation)),
            (i.strict, i.activation, i.bias is not None),
        ),
        grads=_masked_linear_grads,
    ),
    non_differentiable=(1,),
)
register(MASKED_LINEAR, "triton", _kernels)


# ---- masked_linear on bit-packed binary inputs: forward and (weight, bias) backward ------------
def _bits_out(xb, weight, act):
    # z (the pre-activation) is kept for gelu only, whose derivative needs it
    shape = (xb.shape[0], weight.shape[0])
    return (xb.new_empty(shape, dtype=weight.dtype), xb.new_empty(shape if act == "gelu" else (0,), dtype=weight.dtype))


def _bits_fwd(K, x_bits, weight, bias, in_deg, out_deg, strict, act):
    y, z = _bits_out(x_bits, weight, act)
    m = x_bits.shape[0]
    n, k = weight.shape
    if m == 0 or n == 0:
        return y, z
    if k == 0:
        pre = (bias.float() if bias is not None else weight.new_zeros((n,), dtype=torch.float32)).expand(m, n)
        if act == "gelu":
            z.copy_(pre)
        return y.copy_(ref.apply_activation(pre, act)), z
    cfg = K.config("fwd", weight.dtype)
    t, j = K.plan_shape("fwd", n, k, cfg)
    plan = torch.empty((t, j), dtype=torch.int32, device=weight.device)
    counts = torch.empty((t, 2), dtype=torch.int32, device=weight.device)
    K.made_plan(out_deg, in_deg, plan, counts, strict, True, cfg.block_n, cfg.block_k)
    zz = z if act == "gelu" else None
    K.masked_linear_fwd(x_bits, weight, bias, in_deg, out_deg, plan, counts, y, zz, strict, act, cfg, x_bits=True)
    return y, z


def _bits_grad_out(grad, saved, xb, weight, i, o, strict, act, need_w, need_b):
    return weight.new_empty(weight.shape if need_w else (0,)), weight.new_empty((weight.shape[0],) if need_b else (0,))


def _bits_bwd(K, grad, saved, x_bits, weight, in_deg, out_deg, strict, act, need_w, need_b):
    dw, db = _bits_grad_out(grad, saved, x_bits, weight, in_deg, out_deg, strict, act, need_w, need_b)
    n, k = weight.shape
    m = x_bits.shape[0]
    grad = grad.contiguous()
    if need_w:
        if m == 0 or k == 0 or n == 0:
            dw.zero_()
        else:
            K.masked_linear_dw(
                grad,
                saved if act != "none" else None,
                x_bits,
                in_deg,
                out_deg,
                dw,
                db if need_b and m and n else None,
                strict,
                act,
                K.config("dw", weight.dtype),
                x_bits=True,
            )
    if need_b and not (need_w and m and n and k):
        db.copy_(_act_grad(grad, saved, act).sum(0) if m else torch.zeros_like(db))
    return dw, db


def _bits_grads(c, gy, _gz):
    x_bits, weight, in_deg, out_deg, saved = c.saved
    strict, act, has_bias = c.args
    need_w, need_b = c.needs.weight, has_bias and c.needs.bias
    dw, db = c.bwd(gy, saved, x_bits, weight, in_deg, out_deg, strict, act, need_w, need_b)
    return {"weight": dw if need_w else None, "bias": db if need_b else None}


MASKED_LINEAR_BITS = OpSpec(
    "masked_linear_bits",
    "(Tensor x_bits, Tensor weight, Tensor? bias, Tensor in_degrees, Tensor out_degrees, bool strict, "
    "str activation) -> (Tensor, Tensor)",
    _bits_fwd,
    lambda x_bits, weight, bias, i, o, strict, act: _bits_out(x_bits, weight, act),
    Backward(
        "(Tensor grad, Tensor saved, Tensor x_bits, Tensor weight, Tensor in_degrees, Tensor out_degrees, "
        "bool strict, str activation, bool need_weight, bool need_bias) -> (Tensor, Tensor)",
        _bits_bwd,
        _bits_grad_out,
        save=lambda i, out: (
            (i.x_bits, i.weight, i.in_degrees, i.out_degrees, _act_saved(out, i.activation)),
            (i.strict, i.activation, i.bias is not None),
        ),
        grads=_bits_grads,
    ),
)
register(MASKED_LINEAR_BITS, "triton", _kernels)


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """Binary features [..., K] -> int32 words [..., ceil(K / 32)] (pygen.ref.made.pack_bits)."""
    chk.tensor("pack_bits", x, "x")
    return ref.pack_bits(x)


def masked_linear_bits(
    x_bits: torch.Tensor,
    features: int,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_degrees: torch.Tensor,
    out_degrees: torch.Tensor,
    strict: bool = False,
    activation: str | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """masked_linear of binary inputs given bit-packed (``pack_bits``): x_bits [..., ceil(features/32)]
    int32, weight [O, features]; act(sum of the weight columns of the set bits + b), [..., O] in the
    weight's dtype. The kernel unpacks the bits into the MMA operand in registers (1/16 of the
    bytes of bf16 inputs). Differentiable in weight and bias."""
    name = "masked_linear_bits"
    chk.tensor(name, x_bits, "x_bits")
    chk.tensor(name, weight, "weight")
    chk.floating(name, weight, "weight")
    if x_bits.dtype != torch.int32:
        raise TypeError(f"{name}: x_bits must be int32 words (pygen.ops.pack_bits), got {x_bits.dtype}")
    if weight.dim() != 2 or isinstance(features, bool) or not isinstance(features, int) or weight.shape[1] != features:
        raise ValueError(f"{name}: weight must be [out_features, features = {features!r}], got {tuple(weight.shape)}")
    if x_bits.dim() < 1 or x_bits.shape[-1] != -(-features // 32):
        raise ValueError(
            f"{name}: x_bits must have ceil({features} / 32) = {-(-features // 32)} words in its last "
            f"dimension, got shape {tuple(x_bits.shape)}"
        )
    if x_bits.device != weight.device:
        raise ValueError(f"{name}: x_bits is on {x_bits.device} but weight is on {weight.device}")
    chk.linear_args(name, weight.new_empty((1, features)), weight, bias)
    act = chk.activation(name, activation)
    if not isinstance(strict, bool):
        raise TypeError(f"{name}: strict must be a bool, got {strict!r}")
    i = chk.degrees(name, in_degrees, features, "in_degrees", weight.device)
    o = chk.degrees(name, out_degrees, weight.shape[0], "out_degrees", weight.device)
    b = _pick(name, weight, backend)
    if b == "reference":
        return ref.masked_linear_bits(x_bits, features, weight, bias, i, o, strict, act)
    lead = x_bits.shape[:-1]
    _triton_spans(name, x_bits, weight, None)
    y = _registry.get(f"masked_linear_bits_{b}")(
        x_bits.reshape(math.prod(lead), x_bits.shape[-1]), weight, bias, i, o, strict, act
    )[0]
    return y.reshape(*lead, weight.shape[0])


def _new_affine(h, weight, x, save_params: bool):
    m, n = h.shape[0], weight.shape[0]
    return (x.new_empty((m, n // 2)), x.new_empty((m,)), h.new_empty((m, n) if save_params else (0,)))


def _affine_fwd(K, h, weight, bias, in_deg, out_deg, x, save_params):
    z, logdet, params = _new_affine(h, weight, x, save_params)
    m, k = h.shape
    n = weight.shape[0]
    if m == 0:
        return z, logdet, params
    cfg = K.config("fwd", h.dtype)
    t, j = K.plan_shape("fwd", n, k, cfg)
    if k == 0 or n == 0:
        pre = (bias.float() if bias is not None else h.new_zeros((n,), dtype=torch.float32)).expand(m, n)
        zz, ld = ref.made_affine_forward(
            h.new_zeros((m, 0), dtype=torch.float32), pre.new_zeros((n, 0)), pre[0], in_deg, out_deg, x.float()
        )
        z.copy_(zz)
        logdet.copy_(ld)
        if save_params:
            params.copy_(pre)
        return z, logdet, params
    plan = torch.empty((t, j), dtype=torch.int32, device=h.device)
    counts = torch.empty((t, 2), dtype=torch.int32, device=h.device)
    ld_part = torch.empty((m, t), dtype=torch.float32, device=h.device)
    K.made_plan(out_deg, in_deg, plan, counts, True, True, cfg.block_n, cfg.block_k)
    K.made_affine_fwd(
        h, weight, bias, in_deg, out_deg, plan, counts, x, z, params if save_params else None, ld_part, cfg
    )
    logdet.copy_(ld_part.sum(dim=1))
    return z, logdet, params


def _affine_grads(c, gz, gld, _gp):
    """The affine head's parameter gradient in PyTorch, then masked_linear's backward kernel."""
    h, weight, in_deg, out_deg, x, params = c.saved
    (has_bias,) = c.args
    if params.numel() != h.shape[0] * weight.shape[0]:
        raise RuntimeError(
            "made_affine: backward needs the parameters; call it with save_params=True "
            "(pygen.ops.made_affine_forward does when autograd records)"
        )
    p = params.float().view(*x.shape, 2)
    s = torch.sigmoid(p[..., 0] + ref.AFFINE_SCALE_SHIFT)
    scale = s + ref.AFFINE_EPS
    ds = s * (1 - s)
    g_a = gz.float() * x.float() * ds + gld.float()[:, None] * ds / scale
    g_params = torch.stack([g_a, gz.float()], dim=-1).reshape(params.shape).to(params.dtype)
    need_h, need_w, need_b = c.needs.h, c.needs.weight, has_bias and c.needs.bias
    dh, dw, db = _registry.get("masked_linear_backward_triton")(
        g_params, g_params.new_empty(0), h, weight, in_deg, out_deg, None, True, "none", need_h, need_w, need_b
    )
    return {
        "h": dh if need_h else None,
        "weight": dw if need_w else None,
        "bias": db if need_b else None,
        "x": (gz.float() * scale).to(x.dtype) if c.needs.x else None,
    }


MADE_AFFINE = OpSpec(
    "made_affine",
    "(Tensor h, Tensor weight, Tensor? bias, Tensor in_degrees, Tensor out_degrees, Tensor x, "
    "bool save_params) -> (Tensor, Tensor, Tensor)",
    _affine_fwd,
    lambda h, weight, bias, i, o, x, save: _new_affine(h, weight, x, save),
    Backward(
        None,
        None,
        None,
        save=lambda i, out: ((i.h, i.weight, i.in_degrees, i.out_degrees, i.x, out[2]), (i.bias is not None,)),
        grads=_affine_grads,
    ),
    non_differentiable=(2,),
)
register(MADE_AFFINE, "triton", _kernels)


def made_affine_forward(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_degrees: torch.Tensor,
    out_degrees: torch.Tensor,
    x: torch.Tensor,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MAF layer's output head in one kernel: params = h . (W * M)^T + b (strict mask; rows 2d,
    2d+1 = unconstrained scale and shift of input d), z = scale * x + shift with
    scale = sigmoid(a + 2) + 1e-3, and logdet = sum_d log(scale_d) (pygen.ref.made). The kernel
    writes z and per-tile log-det partial sums from the matmul's epilogue (params are written too
    only when autograd records, for the backward). h [B, K], weight [2D, K], x [B, D];
    returns (z [B, D], logdet [B]) in x's dtype."""
    name = "made_affine_forward"
    chk.linear_args(name, h, weight, bias)
    chk.tensor(name, x, "x")
    if x.dim() != 2 or x.shape[0] != h.shape[0] or 2 * x.shape[1] != weight.shape[0]:
        raise ValueError(
            f"{name}: x must be [batch, D] with batch = {h.shape[0]} and 2*D = out_features = "
            f"{weight.shape[0]}, got {tuple(x.shape)}"
        )
    if x.dtype != h.dtype or x.device != h.device:
        raise TypeError(f"{name}: x must be {h.dtype} on {h.device} like h, got {x.dtype} on {x.device}")
    if h.dim() != 2:
        raise ValueError(f"{name}: h must be 2-D [batch, hidden], got shape {tuple(h.shape)}")
    i = chk.degrees(name, in_degrees, weight.shape[1], "in_degrees", h.device)
    o = chk.degrees(name, out_degrees, weight.shape[0], "out_degrees", h.device)
    b = _pick(name, h, backend)
    if b == "reference":
        return ref.made_affine_forward(h, weight, bias, i, o, x)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, weight, bias, x))
    _triton_spans(name, h, weight, None)
    z, logdet, _ = _registry.get(f"made_affine_{b}")(h, weight, bias, i, o, x, save)
    return z, logdet


def _resolve(name, weight, in_degrees, out_degrees, mask, strict, device):
    """(in_deg, out_deg, mask, strict) for the kernels: degrees, or an explicit bool mask."""
    if mask is not None:
        if in_degrees is not None or out_degrees is not None:
            raise ValueError(f"{name}: pass either in_degrees/out_degrees or mask, not both")
        m = chk.explicit_mask(name, mask, weight)
        if chk.checking_values(m):  # the reduction reads the mask: a host sync (module docstring)
            derived = ref.degrees_from_mask(m)
            if derived is not None:
                return derived[0], derived[1], None, False
        return None, None, m, False
    if in_degrees is None or out_degrees is None:
        raise ValueError(f"{name}: in_degrees and out_degrees are required unless mask is given")
    i = chk.degrees(name, in_degrees, weight.shape[1], "in_degrees", device)
    o = chk.degrees(name, out_degrees, weight.shape[0], "out_degrees", device)
    return i, o, None, strict


def masked_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    in_degrees: torch.Tensor | None = None,
    out_degrees: torch.Tensor | None = None,
    strict: bool = False,
    activation: str | None = None,
    *,
    mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """act(x . (W * M)^T + b); see the module docstring."""
    name = "masked_linear"
    chk.linear_args(name, x, weight, bias)
    act = chk.activation(name, activation)
    if not isinstance(strict, bool):
        raise TypeError(f"{name}: strict must be a bool, got {strict!r}")
    in_deg, out_deg, m, strict = _resolve(name, weight, in_degrees, out_degrees, mask, strict, x.device)
    b = _pick(name, x, backend)
    if b == "reference":
        if m is not None:
            return ref.masked_matmul(x, weight, bias, m, act)
        return ref.masked_linear(x, weight, bias, in_deg, out_deg, strict, act)
    return _masked_linear_op(name, b, x, weight, bias, in_deg, out_deg, m, strict, act)


def _masked_linear_op(name, b, x, weight, bias, in_deg, out_deg, m, strict: bool, act) -> torch.Tensor:
    """The registered masked_linear op of backend ``b`` on x [..., K] (run as [M, K])."""
    k, n = weight.shape[1], weight.shape[0]
    x2 = x.reshape(math.prod(x.shape[:-1]), k)
    _triton_spans(name, x2, weight, m)
    y, _ = _registry.get(f"masked_linear_{b}")(x2, weight, bias, in_deg, out_deg, m, strict, act)
    return y.reshape(*x.shape[:-1], n)


def masked_linear_plain(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor,
    activation: str | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """act(x . (W * mask)^T + b) with the plain masked-matmul kernel: the explicit mask is used as
    it is (no reduction to degrees, so no host synchronisation). ``mask``: [O, I] bool or 0/1."""
    name = "masked_linear"
    chk.linear_args(name, x, weight, bias)
    act = chk.activation(name, activation)
    m = chk.explicit_mask(name, mask, weight)
    b = _pick(name, x, backend)
    if b == "reference":
        return ref.masked_matmul(x, weight, bias, m, act)
    return _masked_linear_op(name, b, x, weight, bias, None, None, m, False, act)


def sort_hidden_units(
    weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None], degrees: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[torch.Tensor], list[torch.Tensor]]:
    """Permute the hidden units of a feedforward masked network so every hidden layer's degrees
    are non-decreasing; the function is unchanged. ``weights``/``biases``: L tensors (biases may
    be None), ``degrees``: L+1 vectors (inputs first). Returns (weights, biases, degrees, perms)
    with ``perms[l]`` the permutation applied to hidden layer l+1 (new unit u = old perms[l][u])."""
    weights, biases, degrees = list(weights), list(biases), list(degrees)
    perms = []
    for l in range(len(weights) - 1):
        p = ref.degree_sort_permutation(degrees[l + 1])
        weights[l] = weights[l][p]
        biases[l] = None if biases[l] is None else biases[l][p]
        weights[l + 1] = weights[l + 1][:, p]
        degrees[l + 1] = degrees[l + 1][p]
        perms.append(p)
    return weights, biases, degrees, perms


from ._made_sample import made_sample  # noqa: E402,F401  (uses masked_linear above)
