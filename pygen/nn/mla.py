"""Multi-head latent attention (DeepSeek-V2/V3), a drop-in for transformers' DeepseekV3Attention.

Same constructor ``MLA(config, layer_idx)``, attribute names and state_dict keys as
transformers 5.x's DeepseekV3Attention (q_a_proj, q_a_layernorm, q_b_proj - or q_proj when
``config.q_lora_rank`` is None - kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj), and
the same forward: ``forward(hidden_states, position_embeddings, attention_mask, cache=None,
**kwargs) -> (attn_output [b, s, hidden], attn_weights)`` (``past_key_values=`` is accepted as the
old name of ``cache``). The fast paths never materialise the attention weights, so the second item
is None, as with transformers' sdpa / flash implementations - unless the caller asks for them
(``output_attentions=True``, or ``config.output_attentions``, transformers' rule): then attention
runs as explicit softmax and returns the weights [b, H, s, S] as transformers' eager does.
Math (H heads, Dn = qk_nope_head_dim 128, Dr = qk_rope_head_dim 64, Dv = v_head_dim 128,
R = kv_lora_rank 512)::

    q            = q_b_proj(RMSNorm(q_a_proj(x)))  (or q_proj(x))   [b, s, H, Dn + Dr]
    [c, k_r]     = kv_a_proj_with_mqa(x);  c = kv_a_layernorm(c)      c [b, s, R], k_r [b, s, Dr]
    q_r, k_r     = RoPE(q_r), RoPE(k_r)      (YaRN, interleaved pairs: pygen/nn/_rope.py)
    [k_n, v]     = kv_b_proj(c) per head                              [b, S, H, Dn], [b, S, H, Dv]
    o            = softmax(scale * [q_n, q_r] . [k_n, k_r]^T + causal) v,  scale = 1/sqrt(Dn + Dr) * mscale^2
    out          = o_proj(o)

Three ways through the attention, by what ``cache`` is:

- None or a transformers Cache (its ``update`` stores the compressed latents, as transformers
  5.x does): decode / MTP steps (fewer than ``chunk_threshold`` new tokens after cached ones,
  inference, plain causal mask) run absorbed mla_decode over the cached latents viewed as
  one-token pages; otherwise keys/values are expanded per head and attention runs in pygen.ops.mla_prefill
  (varlen causal flash attention, bottom-right aligned when the keys include cached tokens,
  differentiable). A mask that is not plain causal (padding, packed sequences), dropout in
  training and ``output_attentions`` fall back to explicit masked softmax attention
  (the eager math); ``self.last_path`` says which path ran.
- a :class:`pygen.nn._mla_cache.PagedMLACache` with an open step: the new latents go into the
  paged cache (mla_cache_append); a first chunk (nothing cached yet) runs the same prefill as
  above; later steps run pygen.ops.mla_decode on the 576-wide latent cache with weight absorption
  (pygen/nn/_mla_absorb.py): query [W_UK^T q_n, q_r], output W_UV o_latent. Steps of at least
  ``chunk_threshold`` (16) tokens after cached ones (chunked prefill) split the work: new-vs-new
  in mla_prefill, new-vs-cached in absorbed mla_decode, merged with merge_attn_states. ``attention_mask`` is
  ignored on this path: the cache's lengths define the (causal) mask, ragged batches included.
  A transformers Cache with ``pygen_paged_step`` / ``pygen_paged_done`` (pygen.integrations.
  transformers_paged_cache.PagedMLATransformersCache, for generate()) takes this path too: the
  hook opens / commits the step around each layer and hands over its PagedMLACache.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops._common_checks import tracing
from . import _mla_absorb as absorb
from ._mla_cache import PagedMLACache
from ._rope import apply_rope, softmax_scale

__all__ = ["MLA", "RMSNorm", "attention_explicit", "mask_is_causal"]


class RMSNorm(nn.Module):
    """transformers' DeepseekV3RMSNorm: weight * (x / rms(x)) with the statistics in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dt)


def mask_is_causal(mask: torch.Tensor | None, q_len: int, kv_len: int) -> bool:
    """True when ``mask`` (None, bool keep-mask or additive float mask, [b, 1|H, q, kv]) equals the
    bottom-right causal mask: query i sees keys j <= i + kv_len - q_len. Reads the mask (one sync),
    except while torch.compile traces, a CUDA graph captures or the mask is fake: its values are
    unknown then, and a mask that is not None is taken as not plain causal (the explicit path is
    right for any mask), so a compiled model needs no data-dependent branch."""
    if mask is None:
        return True
    if mask.dim() != 4 or mask.shape[-2:] != (q_len, kv_len):
        return False
    if tracing(mask):
        return False
    keep = mask if mask.dtype == torch.bool else mask == 0
    i = torch.arange(q_len, device=mask.device)[:, None]
    j = torch.arange(kv_len, device=mask.device)[None, :]
    return bool((keep == (j <= i + (kv_len - q_len))).all())


def _check_mask(mask: torch.Tensor | None, batch: int, heads: int) -> None:
    """A 4-D attention_mask must broadcast over [batch, heads] (the causal-mask test reads only its
    last two dims and values, so a mask of another batch took the prefill path unnoticed)."""
    if mask is not None and mask.dim() == 4 and (mask.shape[0] not in (1, batch) or mask.shape[1] not in (1, heads)):
        raise ValueError(
            f"MLA: attention_mask has shape {tuple(mask.shape)}: its first two dims must be 1 or the batch "
            f"({batch}) and 1 or the heads ({heads})"
        )


def attention_weights_requested(config: Any, kwargs: dict) -> bool:
    """Whether an attention call asks for its weights: transformers' rule (the ``output_attentions``
    keyword, else ``config.output_attentions``), the one its output recorder uses to decide whether
    it collects them (pygen.nn.MLA and the "pygen" attention function of transformers_mla)."""
    return bool(kwargs.get("output_attentions", getattr(config, "output_attentions", False)))


def attention_explicit(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    dropout: float = 0.0,
    training: bool = False,
    *,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax(scale q k^T + mask) v as transformers' eager path computes it.
    q [b, s, H, Dq], k [b, S, H, Dq], v [b, S, H, Dv], mask None (= bottom-right causal), bool
    keep-mask or additive float [b, 1|H, s, S]; returns [b, s, H, Dv], or with ``return_weights``
    (output, weights [b, H, s, S]) - the probabilities after dropout, in q's dtype, which is what
    eager returns for ``output_attentions``."""
    s, kv = q.shape[1], k.shape[1]
    w = torch.matmul(q.transpose(1, 2), k.transpose(1, 2).transpose(2, 3)) * scale
    # masked scores get the dtype's lowest finite value, not -inf, as transformers' eager masks do:
    # a query that sees nothing (left padding) then averages instead of producing NaN
    low = torch.finfo(w.dtype).min
    if mask is None:
        i = torch.arange(s, device=q.device)[:, None]
        j = torch.arange(kv, device=q.device)[None, :]
        w = w.masked_fill(j > i + (kv - s), low)
    elif mask.dtype == torch.bool:
        w = w.masked_fill(~mask, low)
    else:
        w = w + mask
    # float32 softmax for half types like eager; float64 stays float64 (eager would round it)
    w = F.softmax(w, dim=-1, dtype=torch.promote_types(w.dtype, torch.float32)).to(q.dtype)
    w = F.dropout(w, p=dropout, training=training)
    out = torch.matmul(w, v.transpose(1, 2)).transpose(1, 2)
    return (out, w) if return_weights else out


def attention_prefill(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, backend: str | None
) -> torch.Tensor:
    """Bottom-right causal attention of equal-length batches through pygen.ops.mla_prefill.
    q [b, s, H, Dq], k [b, S, H, Dq], v [b, S, H, Dv] -> [b, s, H, Dv]."""
    from ..ops.mla import mla_prefill

    b, s, h, dq = q.shape
    kv = k.shape[1]
    cu_q = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=q.device)
    cu_k = torch.arange(0, (b + 1) * kv, kv, dtype=torch.int32, device=q.device)
    out, _ = mla_prefill(
        q.reshape(b * s, h, dq),
        k.reshape(b * kv, h, dq),
        v.reshape(b * kv, h, -1),
        cu_q,
        cu_k,
        max_seqlen_q=s,
        max_seqlen_k=kv,
        softmax_scale=scale,
        causal=True,
        backend=backend,
    )
    return out.view(b, s, h, -1)


class MLA(nn.Module):
    """DeepSeek-V3 multi-head latent attention (see the module docstring)."""

    def __init__(self, config: Any, layer_idx: int | None = None, *, backend: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.backend = backend
        self.attention_dropout = float(getattr(config, "attention_dropout", 0.0) or 0.0)
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_lora_rank = config.q_lora_rank
        self.qk_rope_head_dim = config.qk_rope_head_dim
        self.kv_lora_rank = config.kv_lora_rank
        self.v_head_dim = config.v_head_dim
        self.qk_nope_head_dim = config.qk_nope_head_dim
        self.qk_head_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
        kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.num_key_value_groups = self.num_heads // kv_heads
        self.is_causal = True
        bias = bool(getattr(config, "attention_bias", False))
        h, dq = self.num_heads, self.qk_head_dim
        if self.q_lora_rank is None:
            self.q_proj = nn.Linear(self.hidden_size, h * dq, bias=False)
            self.q_a_proj = self.q_a_layernorm = self.q_b_proj = None
        else:
            self.q_proj = None
            self.q_a_proj = nn.Linear(self.hidden_size, self.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(self.q_lora_rank)
            self.q_b_proj = nn.Linear(self.q_lora_rank, h * dq, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(self.hidden_size, self.kv_lora_rank + self.qk_rope_head_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank)
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, h * (self.qk_nope_head_dim + self.v_head_dim), bias=False)
        self.o_proj = nn.Linear(h * self.v_head_dim, self.hidden_size, bias=bias)
        self.scaling = softmax_scale(config)
        self.rope_interleave = bool(getattr(config, "rope_interleave", True))
        self.last_path: str | None = None
        # paged steps of at least this many tokens after cached ones run as a chunk (prefill +
        # decode, merged); shorter ones (decode, multi-token prediction) as one absorbed decode
        self.chunk_threshold = 16

    # ---- pieces ----------------------------------------------------------------------------
    def project(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q_nope [b,s,H,Dn], q_rope [b,s,H,Dr], latent [b,s,R], k_rope [b,s,Dr]), RoPE applied."""
        b, s = hidden_states.shape[:-1]
        if self.q_lora_rank is None:
            q = self.q_proj(hidden_states)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))
        q = q.view(b, s, self.num_heads, self.qk_head_dim)
        q_nope, q_rope = torch.split(q, [self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        latent, k_rope = torch.split(
            self.kv_a_proj_with_mqa(hidden_states), [self.kv_lora_rank, self.qk_rope_head_dim], dim=-1
        )
        latent = self.kv_a_layernorm(latent)
        cos, sin = position_embeddings
        q_rope = apply_rope(q_rope, cos, sin, self.rope_interleave, unsqueeze_dim=2)
        k_rope = apply_rope(k_rope[:, :, None], cos, sin, self.rope_interleave, unsqueeze_dim=2)[:, :, 0]
        return q_nope, q_rope, latent, k_rope

    def expand_kv(self, latent: torch.Tensor, k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys [b, S, H, Dn + Dr] and values [b, S, H, Dv] from latents [b, S, R], [b, S, Dr]."""
        b, n = latent.shape[:2]
        kv = self.kv_b_proj(latent).view(b, n, self.num_heads, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = torch.split(kv, [self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        k = torch.cat([k_nope, k_rope[:, :, None].expand(-1, -1, self.num_heads, -1)], dim=-1)
        return k, v

    def _dropout(self) -> float:
        """The attention dropout rate of this call: the config's in training mode, else 0."""
        return self.attention_dropout if self.training else 0.0

    def _reference_while_tracing(self, t: torch.Tensor) -> bool:
        """The reference MLA ops loop over the sequences on the host (cu_seqlens.tolist()), which
        torch.compile and torch.export cannot trace: while tracing with the reference backend
        chosen (the CPU default), the explicit path runs instead (the same attention)."""
        if not tracing(t):
            return False
        from ..ops.mla import _pick

        return _pick("mla_prefill", t, self.backend) == "reference"

    def _attend(self, q, k, v, mask, weights: bool = False):
        """(output [b, s, H, Dv], attention weights [b, H, s, S] when ``weights``, else None)."""
        dropout = self._dropout()
        traced_ref = self._reference_while_tracing(q)
        if not weights and dropout == 0.0 and not traced_ref and mask_is_causal(mask, q.shape[1], k.shape[1]):
            self.last_path = "mla_prefill"
            return attention_prefill(q.contiguous(), k.contiguous(), v.contiguous(), self.scaling, self.backend), None
        why = (
            "output_attentions"
            if weights
            else "dropout"
            if dropout
            else "reference backend while tracing"
            if traced_ref
            else "mask not plain causal"
        )
        self.last_path = f"explicit ({why})"
        out = attention_explicit(q, k, v, mask, self.scaling, dropout, self.training, return_weights=weights)
        return out if weights else (out, None)

    def weights_requested(self, kwargs: dict) -> bool:
        """Whether the caller asked for the attention weights (:func:`attention_weights_requested`)."""
        return attention_weights_requested(self.config, kwargs)

    def _paged(self, cache: PagedMLACache, q_nope, q_rope, latent, k_rope):
        kv_cache, table, lens = cache.append(self.layer_idx, latent, k_rope)
        seq_ids, n = cache.step_info()[:2]
        if all(cache.seqlen(sid) == 0 for sid in seq_ids):  # first chunk: plain causal prefill
            k, v = self.expand_kv(latent, k_rope)
            return self._attend(torch.cat([q_nope, q_rope], -1), k, v, None)[0]
        if self._dropout():  # the paged kernels have no dropout: say so rather than skip it
            raise ValueError(
                f"MLA: attention_dropout = {self.attention_dropout} in training mode is not supported on a paged "
                "MLA cache after its first chunk (mla_decode has no dropout); call model.eval() to generate"
            )

        w_uk, w_uv = absorb.split_kv_b(self.kv_b_proj.weight, self.num_heads, self.qk_nope_head_dim, self.v_head_dim)
        q = absorb.absorbed_query(q_nope, q_rope, w_uk)
        if kv_cache.dtype != torch.uint8:  # the FP8 cache (uint8 bytes) takes q in the model's dtype
            q = q.to(kv_cache.dtype)
        if n >= self.chunk_threshold:
            return self._paged_chunk(q_nope, q_rope, latent, k_rope, q, kv_cache, table, lens - n, w_uv)
        out_latent, _ = self._decode(q, kv_cache, table, lens, causal=True)
        self.last_path = "mla_decode (absorbed)"
        return absorb.absorb_output(out_latent.to(q_nope.dtype), w_uv)

    def _decode(self, q, kv_cache, table, lens, causal: bool):
        """mla_decode in the absorbed form: (latent output, lse) with this module's scale and backend."""
        from ..ops.mla import mla_decode

        kw = dict(head_dim_v=self.kv_lora_rank, softmax_scale=self.scaling, backend=self.backend)
        return mla_decode(q, kv_cache, table, lens, causal=causal, **kw)

    def _paged_chunk(self, q_nope, q_rope, latent, k_rope, q_abs, kv_cache, table, past, w_uv):
        """A chunk of n new tokens after cached ones: new-vs-new causal attention in mla_prefill
        (non-absorbed: 2 (192 + 128) FLOPs per pair instead of 2 (576 + 512)), new-vs-cached in
        absorbed mla_decode with the n queries folded into the head axis (non-causal: every new
        token sees every cached one, and the pages are read once), merged by their lse."""
        from ..ops.mla import merge_attn_states, mla_prefill

        b, n, h, _ = q_nope.shape
        k, v = self.expand_kv(latent, k_rope)
        cu = torch.arange(0, (b + 1) * n, n, dtype=torch.int32, device=q_nope.device)
        o_new, lse_new = mla_prefill(
            torch.cat([q_nope, q_rope], -1).reshape(b * n, h, -1).contiguous(),
            k.reshape(b * n, h, -1).contiguous(),
            v.reshape(b * n, h, -1).contiguous(),
            cu,
            cu,
            max_seqlen_q=n,
            max_seqlen_k=n,
            softmax_scale=self.scaling,
            causal=True,
            backend=self.backend,
        )
        o_lat, lse_past = self._decode(q_abs.reshape(b, 1, n * h, -1), kv_cache, table, past, causal=False)
        o_past = absorb.absorb_output(o_lat.view(b, n, h, -1).to(q_nope.dtype), w_uv)
        lse_past = lse_past.view(b, n, h).permute(2, 0, 1).reshape(h, b * n)  # [b, n*h, 1] -> [h, b*n]
        out, _ = merge_attn_states(
            o_new,
            lse_new,
            o_past.reshape(b * n, h, -1).contiguous().to(o_new.dtype),
            lse_past.contiguous(),
            backend=self.backend,
        )
        self.last_path = "chunk: mla_prefill + absorbed mla_decode, merged"
        return out.view(b, n, h, -1)

    # ---- forward ---------------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        legacy = kwargs.pop("past_key_values", None)
        cache = legacy if cache is None else cache
        b, s = hidden_states.shape[:-1]
        _check_mask(attention_mask, b, self.num_heads)
        want_weights, weights = self.weights_requested(kwargs), None
        hooked = hasattr(cache, "pygen_paged_step")  # a transformers Cache over a PagedMLACache
        paged_cache = hooked or isinstance(cache, PagedMLACache)
        if paged_cache and want_weights:
            raise ValueError(
                "output_attentions=True is not supported with a paged MLA cache (its attention runs on the "
                "cache pages and never forms the weights); use transformers' DynamicCache to get them"
            )
        q_nope, q_rope, latent, k_rope = self.project(hidden_states, position_embeddings)
        if paged_cache:
            if self.layer_idx is None:
                raise ValueError("MLA needs a layer_idx to use a PagedMLACache")
            paged = cache.pygen_paged_step(self.layer_idx, latent, attention_mask) if hooked else cache
            o = self._paged(paged, q_nope, q_rope, latent, k_rope)
            if hooked:
                cache.pygen_paged_done(self.layer_idx)
        else:
            if cache is not None:  # transformers Cache: stores the compressed latents (transformers 5.x)
                latent4, k_rope4 = cache.update(
                    latent.view(b, 1, s, -1), k_rope.view(b, 1, s, -1), self.layer_idx, kwargs=kwargs
                )
                latent, k_rope = latent4[:, 0], k_rope4[:, 0]
            if not want_weights and self._absorb_contiguous_ok(s, latent, attention_mask):
                o = self._absorbed_contiguous(q_nope, q_rope, latent, k_rope)
            else:
                k, v = self.expand_kv(latent, k_rope)
                o, weights = self._attend(torch.cat([q_nope, q_rope], -1), k, v, attention_mask, want_weights)
        return self.o_proj(o.reshape(b, s, self.num_heads * self.v_head_dim)), weights

    def _absorb_contiguous_ok(self, s: int, latent: torch.Tensor, mask) -> bool:
        """Decode / MTP steps on transformers' cache (inference, tokens already cached, plain
        causal mask, the decode kernel's latent widths) take the absorbed path below."""
        kv_len = latent.shape[1]
        return (
            kv_len > s
            and s < self.chunk_threshold
            and not torch.is_grad_enabled()
            and not self._dropout()  # the decode kernel has no dropout: the explicit path applies it
            and self.kv_lora_rank == 512
            and self.qk_rope_head_dim == 64
            and not self._reference_while_tracing(latent)
            and mask_is_causal(mask, s, kv_len)
        )

    def _absorbed_contiguous(self, q_nope, q_rope, latent, k_rope):
        """Absorbed mla_decode over latents held contiguously per sequence (transformers' cache):
        viewed as pages of one token ([b*S, 1, 1, 576], block_table = arange), so the kernel reads
        576 values per cached token instead of the H * (192 + 128) of expanded keys and values.
        The concatenation copies the latents once per call (same order of bytes as the read)."""

        b, n = latent.shape[:2]
        w_uk, w_uv = absorb.split_kv_b(self.kv_b_proj.weight, self.num_heads, self.qk_nope_head_dim, self.v_head_dim)
        q = absorb.absorbed_query(q_nope, q_rope, w_uk)
        kv = torch.cat([latent, k_rope], -1).to(q.dtype).reshape(b * n, 1, 1, -1)
        table = torch.arange(b * n, dtype=torch.int32, device=q.device).view(b, n)
        lens = torch.full((b,), n, dtype=torch.int32, device=q.device)
        out_latent, _ = self._decode(q, kv, table, lens, causal=True)
        self.last_path = "mla_decode (absorbed, transformers cache)"
        return absorb.absorb_output(out_latent.to(q_nope.dtype), w_uv)

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, q_lora_rank={self.q_lora_rank}, kv_lora_rank={self.kv_lora_rank}, "
            f"qk_nope={self.qk_nope_head_dim}, qk_rope={self.qk_rope_head_dim}, v={self.v_head_dim}, "
            f"scale={self.scaling:.6g}, backend={self.backend}"
        )
