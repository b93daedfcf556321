"""Triton kernels of the GRPO loss (DeepSeekMath / DeepSeek-R1; TRL's GRPOTrainer formulas, stated
in pygen/ref/losses.py): one pass over the [B, T] token log-probabilities.

Per token (b, t), with A_b the sequence's advantage and r = exp(logp - old) (r = 1 without old):

    l    = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) + beta (exp(ref - logp) - (ref - logp) - 1)
    dl/dlogp = -r A [r A <= clip(r) A] + beta (1 - exp(ref - logp))        (KL terms only with ref)

One kernel, ``_grpo_loss_kernel``, serves both passes (BACKWARD): one program per [BLOCK_B, BLOCK_T]
tile (T block fastest), so the grid fills the GPU for few long sequences as for many short ones.

Forward: tile (row block, T block s) writes its rows' partial sums
    part[0, s, b] = sum_t m_bt l_bt,   part[1, s, b] = sum_t m_bt
(m is the mask as float; a token with m = 0 adds exactly nothing, whatever its log-probs hold).
The op sums the S partials (deterministic, no atomics) into rows [B] and counts [B]; the loss
types' normalisations are torch expressions of these two vectors (pygen/ops/losses.py).

Backward: tile (row block, T block) writes
    grad[b, t] = g_b m_bt dl/dlogp_bt            (g = dLoss / d rows[b], [B])
in grad's dtype (the rounding cast of kernels/_bf16.py).

Layouts: logp / old / ref / mask / grad [B, T] with unit stride along T and any row stride; adv [B],
part [2, S, B] and g [B] contiguous in the compute dtype ACC (adv's dtype): float32, float64 for
float64 log-probs (there is no dot product here, so float64 compiles, and the op's float64
gradcheck covers this backend too). Every loaded value is converted to the compute dtype right after its load (so 16-bit
inputs also run under the interpreter); the mask is read as it comes (bool as uint8, integer or
float). Row offsets are 64-bit (B T may pass 2^31).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._args import join
from .._bf16 import cast


@triton.jit
def _grpo_token_terms(
    lp_ptr,
    old_ptr,
    ref_ptr,
    mask_ptr,
    rows,
    cols,
    ok,
    adv,
    stride_lp,
    stride_old,
    stride_ref,
    stride_mask,
    eps_low,
    eps_high,
    beta,
    HAS_OLD: tl.constexpr,
    HAS_REF: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_T: tl.constexpr,
    ACC: tl.constexpr,
):
    """(m l, m dl/dlogp, m) of one [BLOCK_B, BLOCK_T] tile in ACC, 0 outside ``ok`` and where m = 0."""
    r64 = rows.to(tl.int64)[:, None]
    logp = tl.load(lp_ptr + r64 * stride_lp + cols[None, :], mask=ok, other=0.0).to(ACC)
    m = tl.load(mask_ptr + r64 * stride_mask + cols[None, :], mask=ok, other=0).to(ACC)
    if HAS_OLD:
        old = tl.load(old_ptr + r64 * stride_old + cols[None, :], mask=ok, other=0.0).to(ACC)
        ratio = tl.exp(logp - old)
    else:  # TRL's old = logp.detach(): the ratio is exactly 1
        ratio = tl.full((BLOCK_B, BLOCK_T), 1.0, ACC)
    # the scalars come as float32 pairs (kernels/_args.py): a float64 loss clips at 1 - 0.2, not fp32's
    clipped = tl.minimum(tl.maximum(ratio, 1.0 - join(eps_low, ACC)), 1.0 + join(eps_high, ACC))
    ra = ratio * adv[:, None]
    ca = clipped * adv[:, None]
    loss = -tl.minimum(ra, ca)
    # the unclipped term is the active one on ties too (torch.min splits the gradient of a tie and
    # clamp passes it inside its closed range: the halves add up to the whole)
    dloss = tl.where(ra <= ca, -ra, 0.0)
    if HAS_REF:
        ref = tl.load(ref_ptr + r64 * stride_ref + cols[None, :], mask=ok, other=0.0).to(ACC)
        d = ref - logp
        ed = tl.exp(d)
        b = join(beta, ACC)
        loss += b * (ed - d - 1.0)
        dloss += b * (1.0 - ed)
    keep = ok & (m != 0.0)
    return tl.where(keep, loss * m, 0.0), tl.where(keep, dloss * m, 0.0), tl.where(ok, m, 0.0)


@triton.jit
def _grpo_loss_kernel(
    lp_ptr,  # [B, T] log-probs of the policy
    old_ptr,  # [B, T] log-probs of the sampling policy (HAS_OLD)
    ref_ptr,  # [B, T] log-probs of the reference model (HAS_REF)
    adv_ptr,  # [B] advantages, in the compute dtype (it sets ACC)
    mask_ptr,  # [B, T] completion mask (bool as uint8, integer or float)
    out_ptr,  # forward: part [2, S = n_t_blocks, B] (ACC); backward: grad [B, T] (log-probs' dtype)
    g_ptr,  # backward: [B] dLoss / d rows (ACC); the forward does not read it
    B,
    T,
    stride_lp,
    stride_old,
    stride_ref,
    stride_mask,
    stride_out,  # backward: grad's row stride
    n_t_blocks,
    eps_low,  # the clip range and the KL weight, each a (hi, lo) float32 pair (kernels/_args.py)
    eps_high,
    beta,
    HAS_OLD: tl.constexpr,
    HAS_REF: tl.constexpr,
    BACKWARD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_T: tl.constexpr,
    UPCAST: tl.constexpr,  # backward: bf16 grad under the interpreter (kernels/_bf16.py)
):
    ACC: tl.constexpr = adv_ptr.dtype.element_ty
    pid = tl.program_id(0)
    rows = (pid // n_t_blocks) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = (pid % n_t_blocks) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < B
    ok = row_ok[:, None] & (cols < T)[None, :]
    adv = tl.load(adv_ptr + rows, mask=row_ok, other=0.0)
    loss, dloss, m = _grpo_token_terms(lp_ptr, old_ptr, ref_ptr, mask_ptr, rows, cols, ok, adv, stride_lp, stride_old,
                                       stride_ref, stride_mask, eps_low, eps_high, beta, HAS_OLD, HAS_REF, BLOCK_B,
                                       BLOCK_T, ACC)  # fmt: skip
    if BACKWARD:
        g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
        out = cast(g[:, None] * dloss, out_ptr.dtype.element_ty, UPCAST)
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * stride_out + cols[None, :], out, mask=ok)
    else:
        base = out_ptr + (pid % n_t_blocks) * B + rows
        tl.store(base, tl.sum(loss, 1), mask=row_ok)
        tl.store(base + n_t_blocks * B, tl.sum(m, 1), mask=row_ok)
