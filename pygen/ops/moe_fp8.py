"""FP8 block-scaled variant of fused_moe (DeepSeek-V3 inference recipe), built from the MoE and FP8
families' kernels: routing alignment (moe_align, 128-row blocks), the contiguous-layout grouped FP8
GEMM (fp8_gemm_grouped) for the gate/up and down projections, and a deterministic weighted combine.

    w1q, w1s, w2q, w2s = pygen.ops.quantize_moe_weights_fp8(w1, w2)     # once, at load time
    out = pygen.ops.fused_moe_fp8(x, w1q, w1s, w2q, w2s, topk_weights, topk_ids)

Math (e = topk_ids[t, j], Q = 1x128 activation quantisation, W~ = 128x128 block-quantised weight):
    gu_s   = Q(x_t) . W1~[e]^T                      [2I], fp32
    h_s    = act(gu_s[:I]) * gu_s[I:]               [I]
    y_s    = Q(h_s) . W2~[e]^T                      [H], fp32
    out[t] = sum_j topk_weights[t, j] * y_(t, j)    in x's dtype

Layouts: x [T, H] (H % 128 == 0); w1q [E, 2I, H] e4m3 with scales [E, 2I/128, H/128] (I % 128 == 0);
w2q [E, H, I] e4m3 with scales [E, ceil(H/128), I/128] (quantize_fp8_128x128's layout, the grouped
GEMM's B operand); topk_weights / topk_ids [T, k]. Activation rows are quantised once per token and
gathered into the contiguous layout (expert segments padded to 128 rows; padding rows are zero and
marked -1 in m_indices, so their tiles do no MMA). The combine gathers each slot's row through the
inverse of the sorted order and sums a token's k rows in a fixed order: deterministic, no atomics.
Forward only (the FP8 training path is pygen.nn.FP8Linear's; expert weights here are frozen).
"""

from __future__ import annotations

import torch

from ..ref import moe as ref_moe
from . import _moe_checks as chk
from ._common_checks import INDEX_DTYPES
from .fp8 import fp8_gemm_grouped, quantize_fp8_1x128, quantize_fp8_128x128
from .moe import ACTIVATIONS, _inverse, moe_align

__all__ = ["quantize_moe_weights_fp8", "fused_moe_fp8"]

BLOCK = 128  # the recipe's tile: activation 1x128, weight 128x128, grouped GEMM M tile


def quantize_moe_weights_fp8(
    w1: torch.Tensor, w2: torch.Tensor, *, scale_format: str = "fp32", backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w1q, w1_scales, w2q, w2_scales) from w1 [E, 2I, H] and w2 [E, H, I] (128x128 blocks)."""
    for name, w in (("w1", w1), ("w2", w2)):
        if not isinstance(w, torch.Tensor) or w.dim() != 3:
            raise ValueError(f"quantize_moe_weights_fp8: {name} must be a 3-D [E, N, K] tensor")
    w1q, w1s = quantize_fp8_128x128(w1, scale_format=scale_format, backend=backend)
    w2q, w2s = quantize_fp8_128x128(w2, scale_format=scale_format, backend=backend)
    return w1q, w1s, w2q, w2s


def _check(x, w1q, w1s, w2q, w2s, topk_weights, topk_ids, activation):
    name = "fused_moe_fp8"
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{name}: hidden_states must be a floating [T, H] tensor")
    for arg, t in (("w1q", w1q), ("w2q", w2q)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float8_e4m3fn or t.dim() != 3:
            raise TypeError(
                f"{name}: {arg} must be a float8_e4m3fn [E, N, K] tensor (pygen.ops.quantize_moe_weights_fp8)"
            )
    e, i2, h = w1q.shape
    if h != x.shape[1] or i2 % (2 * BLOCK):
        raise ValueError(
            f"{name}: w1q must be [E, 2I, H = {x.shape[1]}] with I a multiple of {BLOCK}, got {tuple(w1q.shape)}"
        )
    if x.shape[1] % BLOCK:
        raise ValueError(f"{name}: hidden size H = {x.shape[1]} must be a multiple of {BLOCK}")
    if tuple(w2q.shape) != (e, h, i2 // 2):
        raise ValueError(f"{name}: w2q must be [E, H, I] = {[e, h, i2 // 2]}, got {list(w2q.shape)}")
    for arg, s, rows, cols in (("w1_scales", w1s, i2, h), ("w2_scales", w2s, h, i2 // 2)):
        want = (e, -(-rows // BLOCK), cols // BLOCK)
        if not isinstance(s, torch.Tensor) or s.dtype != torch.float32 or tuple(s.shape) != want:
            raise ValueError(
                f"{name}: {arg} must be float32 {list(want)} (128x128 block scales), "
                f"got {getattr(s, 'dtype', type(s))} {list(getattr(s, 'shape', []))}"
            )
    if activation not in ACTIVATIONS:
        raise ValueError(f"{name}: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if (
        not isinstance(topk_ids, torch.Tensor)
        or topk_ids.dim() != 2
        or topk_ids.shape[0] != x.shape[0]
        or topk_ids.dtype not in INDEX_DTYPES
    ):
        raise ValueError(f"{name}: topk_ids must be int32/int64 [T = {x.shape[0]}, k]")
    if (
        not isinstance(topk_weights, torch.Tensor)
        or tuple(topk_weights.shape) != tuple(topk_ids.shape)
        or not topk_weights.is_floating_point()
    ):
        raise ValueError(f"{name}: topk_weights must be a floating tensor shaped like topk_ids {tuple(topk_ids.shape)}")
    for arg, t in (
        ("w1q", w1q),
        ("w1_scales", w1s),
        ("w2q", w2q),
        ("w2_scales", w2s),
        ("topk_weights", topk_weights),
        ("topk_ids", topk_ids),
    ):
        if t.device != x.device:
            raise ValueError(f"{name}: {arg} is on {t.device} but hidden_states is on {x.device}")
    return e


def fused_moe_fp8(
    hidden_states: torch.Tensor,
    w1q: torch.Tensor,
    w1_scales: torch.Tensor,
    w2q: torch.Tensor,
    w2_scales: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
    *,
    backend: str | None = None,
    check_ids: bool = True,
) -> torch.Tensor:
    """Routed expert MLP with block-scaled FP8 weights and activations -> [T, H] in hidden_states'
    dtype (module docstring). ``backend`` is passed to the quantisation and grouped-GEMM ops
    (triton or reference)."""
    x = hidden_states
    e = _check(x, w1q, w1_scales, w2q, w2_scales, topk_weights, topk_ids, activation)
    chk.ids_in_range("fused_moe_fp8", topk_ids, e, check_ids)
    t, hdim = x.shape
    k = topk_ids.shape[1]
    inter = w1q.shape[1] // 2
    n_slots = t * k
    if n_slots == 0:
        return x.new_zeros((t, hdim))
    sorted_ids, expert_ids, _ = moe_align(topk_ids, e, BLOCK, check_ids=False)
    rows = expert_ids.numel() * BLOCK  # static: no host synchronisation
    sorted_ids = torch.cat([sorted_ids, sorted_ids.new_full((rows - sorted_ids.numel(),), n_slots)])
    m_indices = expert_ids.repeat_interleave(BLOCK)
    valid = sorted_ids < n_slots
    token = torch.where(valid, sorted_ids // k, t).long()  # t = the zero padding row
    # quantise each token once, then gather its fp8 row and scales into every slot's row
    xq, xs = quantize_fp8_1x128(x.contiguous(), backend=backend)
    xq_pad = torch.cat([xq.view(torch.uint8), xq.new_zeros((1, hdim)).view(torch.uint8)])
    xs_pad = torch.cat([xs, xs.new_ones((1, xs.shape[1]))])
    a = xq_pad[token].view(torch.float8_e4m3fn)
    gu = fp8_gemm_grouped(a, xs_pad[token].contiguous(), w1q, w1_scales, m_indices, torch.float32, backend=backend)
    h = ref_moe.activation(gu[:, :inter], activation) * gu[:, inter:]
    hq, hs = quantize_fp8_1x128(h, backend=backend)
    y = fp8_gemm_grouped(hq, hs, w2q, w2_scales, m_indices, torch.float32, backend=backend)
    # deterministic combine: row of every slot (inverse of the sorted order), k rows per token
    row_of_slot = _inverse(sorted_ids, n_slots).long()  # every slot is in exactly one row
    y_slots = y[row_of_slot].view(t, k, hdim)
    out = (y_slots * topk_weights.to(torch.float32).unsqueeze(-1)).sum(1)
    return out.to(x.dtype)
