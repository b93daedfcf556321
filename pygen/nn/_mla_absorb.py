"""Weight absorption for MLA decode: run attention on the 576-wide latent cache, never on
per-head keys and values.

kv_b_proj.weight is [H * (Dn + Dv), R] (H heads, Dn = qk_nope_head_dim, Dv = v_head_dim,
R = kv_lora_rank); per head it stacks W_UK[h] [Dn, R] over W_UV[h] [Dv, R]. For a cached latent
c_t [R] (after kv_a_layernorm) and rope key k_t [Dr] (shared by all heads)::

    k_nope[h, t] = W_UK[h] c_t,   v[h, t] = W_UV[h] c_t
    score[h, t]  = q_nope[h] . k_nope[h, t] + q_rope[h] . k_t
                 = (W_UK[h]^T q_nope[h]) . c_t + q_rope[h] . k_t          (absorb into the query)
    out[h]       = sum_t p[h, t] v[h, t] = W_UV[h] (sum_t p[h, t] c_t)      (absorb into the output)

so the decode kernel sees one "key" [R + Dr] = [c_t, k_t] per token shared by all heads, the
query q_abs[h] = [W_UK[h]^T q_nope[h], q_rope[h]] [R + Dr] and value = c_t [R]; the latent
output [H, R] goes through W_UV[h] before o_proj. The softmax scale stays the module's scale
(1/sqrt(Dn + Dr) times the YaRN mscale^2): absorption changes no dot product.

Layouts: q_nope [..., H, Dn] -> [..., H, R]; latent output [..., H, R] -> [..., H, Dv].
FLOPs per token and head: 2 * Dn * R (query) and 2 * Dv * R (output) - for DeepSeek-V3
(Dn = Dv = 128, R = 512) 0.26 MFLOP per head, against 2 * (R + Dr + R) = 3.3 kFLOP per cached
token and head inside the decode kernel: absorption pays for itself once the context is longer
than ~80 tokens, and it shrinks the bytes read per token from H * (Dn + Dr + Dv) * E to (R + Dr) * E.
"""

from __future__ import annotations

import torch

__all__ = ["split_kv_b", "absorb_query", "absorb_output", "absorbed_query"]


def split_kv_b(
    kv_b_weight: torch.Tensor, num_heads: int, qk_nope_head_dim: int, v_head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_UK [H, Dn, R], W_UV [H, Dv, R]) views of kv_b_proj.weight [H * (Dn + Dv), R]."""
    r = kv_b_weight.shape[-1]
    if kv_b_weight.shape[0] != num_heads * (qk_nope_head_dim + v_head_dim):
        raise ValueError(
            f"kv_b_weight must have {num_heads} * ({qk_nope_head_dim} + {v_head_dim}) rows, "
            f"got shape {tuple(kv_b_weight.shape)}"
        )
    w = kv_b_weight.view(num_heads, qk_nope_head_dim + v_head_dim, r)
    return w[:, :qk_nope_head_dim], w[:, qk_nope_head_dim:]


def absorb_query(q_nope: torch.Tensor, w_uk: torch.Tensor) -> torch.Tensor:
    """W_UK[h]^T q_nope[h]: [..., H, Dn] x [H, Dn, R] -> [..., H, R]."""
    return torch.einsum("...hd,hdr->...hr", q_nope, w_uk)


def absorb_output(out_latent: torch.Tensor, w_uv: torch.Tensor) -> torch.Tensor:
    """W_UV[h] o[h]: [..., H, R] x [H, Dv, R] -> [..., H, Dv]."""
    return torch.einsum("...hr,hvr->...hv", out_latent, w_uv)


def absorbed_query(q_nope: torch.Tensor, q_rope: torch.Tensor, w_uk: torch.Tensor) -> torch.Tensor:
    """The decode kernel's query [..., H, R + Dr] = [W_UK^T q_nope, q_rope] (contiguous)."""
    return torch.cat([absorb_query(q_nope, w_uk).to(q_rope.dtype), q_rope], dim=-1).contiguous()
