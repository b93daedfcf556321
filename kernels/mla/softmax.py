"""The online softmax (flash attention) of the MLA decode and prefill kernels, in base 2.

    per key tile:  m' = max(m, rowmax S),  p = 2^(S - m'),  alpha = 2^(m - m'),
                   l' = l alpha + rowsum p,  acc' = acc alpha + p V
    at the end:    out = acc / l,  lse2 = m + log2 l   (rows that saw no key: out 0, lse2 -inf)

S is [rows, keys] float32 already scaled by softmax_scale * log2(e), with -inf where a key is not
visible; m is -inf for a row that has seen no key yet (its m' stays -inf and counts as 0).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def online_softmax_step(s, v, m_i, l_i, acc, PRECISION: tl.constexpr):
    """(m', l', acc') after one key tile: scores s [rows, keys], values v [keys, DV]."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def online_softmax_finish(m_i, l_i, acc):
    """(out, lse2): the normalised output and the base-2 log-sum-exp of every row."""
    seen = l_i > 0
    o = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse2 = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    return o, lse2
