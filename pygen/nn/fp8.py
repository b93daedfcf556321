"""FP8Linear: a drop-in nn.Linear that runs the DeepSeek-V3 block-scaled FP8 recipe, and
``convert_to_fp8`` to swap it into a model.

    layer = FP8Linear(in_features, out_features, bias=True, device=None, dtype=None)
    layer = FP8Linear.from_linear(linear)        # shares linear's Parameters (no copy)
    model = convert_to_fp8(model, filter=lambda name, mod: "mlp" in name)

Same constructor arguments, attributes and state_dict keys (``weight``, ``bias``) as nn.Linear;
the master weight stays in its own dtype (bf16 or fp32) and is what the optimizer updates.
pygen extras (keywords only): ``scale_format="fp32"|"ue8m0"`` and ``backend=None``.

Autograd (x [M, K], W [N, K], y = x W^T + b, all GEMMs NT with float32 accumulation):
    forward   y  = fp8_gemm(q1x128(x), q128x128(W))                     (+ b in the epilogue)
    dgrad     dx = fp8_gemm(q1x128(dy), q128x128(W)^T)   the weight's 128x128 blocks transpose
                   into the blocks of W^T, so the forward's quantised weight is reused
                   (transposed once into a K-major copy, the layout the MMA reads)
    wgrad     dW = fp8_gemm_wgrad(q1x128(dy^T), q1x128(x^T))   1x128 x 1x128 along the tokens
                   (M padded with zero rows to a multiple of 128), float32, cast to W's dtype
    db = sum_m dy (high precision)
The backward is the recipe's straight-through approximation (the gradient of the unquantised
layer evaluated with fp8 operands), not the derivative of the quantised forward, so float64
gradcheck does not apply; tests/fp8/test_fp8_modules.py checks every GEMM of it against its float64
oracle and the whole layer against nn.Linear within the tolerance of docs/fp8.md.

Inference cache: in eval mode with autograd off, the quantised weight is kept and reused until the
weight changes (its version counter, data pointer, device or dtype) -- e.g. after an optimizer
step or load_state_dict. Training mode quantises on the fly every call.

Limits: in_features must be a multiple of 128 (the scale grid along K); convert_to_fp8 leaves
other layers alone. A ragged out_features (DeepSeek-V3's 2112 = 1536 + 576) works: the input
gradient, whose reduction runs over out_features, pads dY and W^T with zero columns. Input dtypes:
float32, bfloat16, float16 (output in the input's dtype).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..ops import fp8 as ops
from ..ref.fp8 import BLOCK, round_up

__all__ = ["FP8Linear", "convert_to_fp8", "fp8_linear"]

_IN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _quantize_weight(w, scale_format, backend):
    wq, ws = ops.quantize_fp8_128x128(w, scale_format=scale_format, backend=backend)
    return wq, ws


class _FP8LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias, scale_format, backend, wq, ws):
        if wq is None:
            wq, ws = _quantize_weight(weight.detach(), scale_format, backend)
        xq, xs = ops.quantize_fp8_1x128(x2, scale_format=scale_format, backend=backend)
        y = ops.fp8_gemm(xq, xs, wq, ws, out_dtype=x2.dtype, bias=bias, backend=backend)
        ctx.save_for_backward(x2, wq, ws)
        ctx.cfg = (scale_format, backend, weight.dtype, bias is not None)
        return y

    @staticmethod
    def backward(ctx, gy):
        x2, wq, ws = ctx.saved_tensors
        scale_format, backend, w_dtype, has_bias = ctx.cfg
        gy = gy.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            n = gy.shape[1]
            np_ = round_up(n, BLOCK)
            # dX = dY W: the reduction runs over N, so a ragged N is padded with zero columns of
            # dY and of W^T (the last weight block's scale already covers them)
            gy_n = gy if np_ == n else torch.cat([gy, gy.new_zeros(gy.shape[0], np_ - n)], 1)
            gq, gs = ops.quantize_fp8_1x128(gy_n, scale_format=scale_format, backend=backend)
            # W^T [K, N] with the [K/128, N/128] block scales: K-major copy for the MMA
            wqt = (
                wq.t().contiguous()
                if np_ == n
                else torch.cat([wq.t(), torch.zeros(wq.shape[1], np_ - n, dtype=wq.dtype, device=wq.device)], 1)
            )
            dx = ops.fp8_gemm(gq, gs, wqt, ws.t(), out_dtype=gy.dtype, backend=backend)
        if ctx.needs_input_grad[1]:
            m = gy.shape[0]
            mp = round_up(max(m, 1), BLOCK)
            if mp != m:  # zero tokens add nothing to dW
                gy_p = torch.cat([gy, gy.new_zeros(mp - m, gy.shape[1])])
                x_p = torch.cat([x2, x2.new_zeros(mp - m, x2.shape[1])])
            else:
                gy_p, x_p = gy, x2
            aq, as_ = ops.quantize_fp8_1x128(gy_p.t(), scale_format=scale_format, backend=backend)
            bq, bs = ops.quantize_fp8_1x128(x_p.t(), scale_format=scale_format, backend=backend)
            dw = ops.fp8_gemm_wgrad(aq, as_, bq, bs, out_dtype=torch.float32, backend=backend).to(w_dtype)
        if has_bias and ctx.needs_input_grad[2]:
            db = gy.float().sum(0).to(w_dtype)
        return dx, dw, db, None, None, None, None


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    scale_format: str = "fp32",
    backend: str | None = None,
    weight_fp8: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """F.linear(x, weight, bias) with the FP8 recipe (module docstring); x [..., K]."""
    if not isinstance(x, torch.Tensor) or x.dtype not in _IN_DTYPES:
        raise TypeError(
            f"fp8_linear: x must be a float32/bfloat16/float16 tensor, got {getattr(x, 'dtype', type(x).__name__)}"
        )
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"fp8_linear: x.shape[-1] must be in_features = {k}, got {tuple(x.shape)}")
    if k % BLOCK:
        raise ValueError(f"fp8_linear: in_features ({k}) must be a multiple of {BLOCK}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    wq, ws = weight_fp8 if weight_fp8 is not None else (None, None)
    y = _FP8LinearFn.apply(x2, weight, bias, scale_format, backend, wq, ws)
    return y.reshape(*lead, n)


class FP8Linear(nn.Linear):
    """nn.Linear computed with block-scaled FP8 GEMMs (module docstring)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        scale_format: str = "fp32",
        backend: str | None = None,
    ) -> None:
        if in_features % BLOCK:
            raise ValueError(
                f"FP8Linear: in_features ({in_features}) must be a multiple of {BLOCK} (the FP8 "
                f"scale grid along K); keep this layer as nn.Linear"
            )
        if scale_format not in ("fp32", "ue8m0"):
            raise ValueError(f"FP8Linear: scale_format must be 'fp32' or 'ue8m0', got {scale_format!r}")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.scale_format = scale_format
        self.backend = backend
        self._wcache = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, scale_format: str = "fp32", backend: str | None = None) -> FP8Linear:
        """An FP8Linear sharing ``linear``'s weight and bias Parameters (no copy, no re-init)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"FP8Linear.from_linear: expected an nn.Linear, got {type(linear).__name__}")
        new = cls(
            linear.in_features,
            linear.out_features,
            bias=False,
            device="meta",
            scale_format=scale_format,
            backend=backend,
        )
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

    def _cached_weight(self):
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            self._wcache = None
            return None
        w = self.weight
        key = (w._version, w.data_ptr(), w.device, w.dtype, w.shape, self.scale_format)
        if self._wcache is None or self._wcache[0] != key:
            self._wcache = (key, _quantize_weight(w.detach(), self.scale_format, self.backend))
        return self._wcache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(
            x,
            self.weight,
            self.bias,
            scale_format=self.scale_format,
            backend=self.backend,
            weight_fp8=self._cached_weight(),
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale_format={self.scale_format!r}"


def _fp8_compatible(module: nn.Module) -> bool:
    return type(module) is nn.Linear and module.in_features % BLOCK == 0


def convert_to_fp8(
    model: nn.Module,
    filter: Callable[[str, nn.Module], bool] | None = None,
    *,
    scale_format: str = "fp32",
    backend: str | None = None,
) -> nn.Module:
    """Replace, in place, every nn.Linear of ``model`` (exact type) whose in_features is a
    multiple of 128 and for which ``filter(qualified_name, module)`` is true (default: all)
    by FP8Linear.from_linear (Parameters shared, so optimizers and tied weights keep working).
    Returns ``model``; ``model`` itself is returned converted when it is such a Linear."""
    if filter is not None and not callable(filter):
        raise TypeError(f"convert_to_fp8: filter must be callable(name, module) -> bool, got {filter!r}")
    if _fp8_compatible(model) and (filter is None or filter("", model)):
        return FP8Linear.from_linear(model, scale_format=scale_format, backend=backend)
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if _fp8_compatible(child) and (filter is None or filter(full, child)):
                setattr(mod, child_name, FP8Linear.from_linear(child, scale_format=scale_format, backend=backend))
    return model
