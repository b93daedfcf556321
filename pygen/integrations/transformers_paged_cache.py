"""A transformers ``Cache`` backed by pygen's paged latent cache, for ``generate()`` on DeepseekV3
models whose attention layers are pygen.nn.MLA (``patch_deepseek_attention``).

With transformers' DynamicCache, MLA's decode steps concatenate the whole latent cache into one
tensor on every call (pygen/nn/mla.py, ``_absorbed_contiguous``). This class gives generate() a
``transformers.Cache`` whose storage is one :class:`pygen.nn._mla_cache.PagedMLACache` (all layers,
one page list per batch row): MLA writes each step's latents into the pages with mla_cache_append
and decodes with absorbed mla_decode straight from them - no per-step copy::

    from pygen.integrations.transformers_mla import patch_deepseek_attention
    from pygen.integrations.transformers_paged_cache import PagedMLATransformersCache
    patch_deepseek_attention(model)
    cache = PagedMLATransformersCache(model.config, max_batch_size=2, max_cache_len=4096)
    out = model.generate(ids, max_new_tokens=64, past_key_values=cache)

Layout: page pool [max_batch_size * ceil(max_cache_len / page_size), page_size, 1, 576] per layer
(kv_lora_rank + qk_rope_head_dim; 656 bytes per token with ``fp8=True``), allocated on the first
forward in the latents' dtype and device unless ``dtype`` / ``device`` are given.

Protocol with MLA (the only hook, duck-typed so pygen.nn does not import transformers): at each
layer, ``MLA.forward`` calls ``cache.pygen_paged_step(layer_idx, latent, attention_mask)``, which
opens the forward's step on the first layer to arrive (``PagedMLACache.begin`` for the batch's rows)
and returns the PagedMLACache; MLA's paged path runs; then ``cache.pygen_paged_done(layer_idx)``;
when every layer is done the step is committed, so ``get_seq_length`` (generate's position ids,
the mask sizes) counts the new tokens from the next forward on. A step left open by a forward that
raised is rolled back when the next one starts.

Limits (clear errors, not silent): the rows must be unpadded (the paged path takes the causal mask
from the cache's lengths; a 4-D mask that is not plain causal - left padding - raises ValueError;
checking it reads the mask once per forward, which ``attn_implementation="sdpa"`` or ``"pygen"``
avoid by passing no mask for causal batches); the batch size is fixed by the first forward; beam
search (reorder / repeat / select), cropping (assisted decoding) and torch.compile'd generation
(``is_compileable`` False) are not supported; layers that are not pygen.nn.MLA cannot update it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..nn._mla_cache import PagedMLACache
from ..nn.mla import mask_is_causal

__all__ = ["PagedMLATransformersCache"]


class _PagedMLALayer(CacheLayerMixin):
    """transformers' per-layer view of the shared paged storage: lengths only (all layers of a
    row hold the same number of tokens), the data lives in the owner's PagedMLACache."""

    is_compileable = False
    is_croppable = False
    is_sliding = False
    supports_early_init = False

    def __init__(self, owner: PagedMLATransformersCache, layer_idx: int):
        super().__init__()
        self.owner, self.layer_idx = owner, layer_idx

    def lazy_initialization(self, key_states, value_states) -> None:
        raise NotImplementedError("PagedMLATransformersCache allocates its pages on the first MLA forward")

    def update(self, key_states, value_states, *args, **kwargs):
        raise TypeError(
            "PagedMLATransformersCache can only be used by pygen.nn.MLA layers (swap them in with "
            "pygen.integrations.transformers_mla.patch_deepseek_attention); layer "
            f"{self.layer_idx} called Cache.update"
        )

    def get_seq_length(self) -> int:
        return self.owner.committed_length()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return self.owner.max_cache_len

    def reset(self) -> None:  # the owner frees the pages once for all layers
        pass

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise NotImplementedError("PagedMLATransformersCache cannot be cropped (assisted decoding)")

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError("PagedMLATransformersCache does not support beam search")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("PagedMLATransformersCache does not support beam search / num_return_sequences")

    def batch_select_indices(self, indices) -> None:
        raise NotImplementedError("PagedMLATransformersCache does not support selecting batch rows")


class PagedMLATransformersCache(Cache):
    """transformers Cache over one PagedMLACache (see the module docstring)."""

    def __init__(
        self,
        config: Any,
        max_batch_size: int,
        max_cache_len: int,
        page_size: int = 64,
        fp8: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str | None = None,
    ):
        if max_batch_size < 1 or max_cache_len < 1:
            raise ValueError(f"max_batch_size and max_cache_len must be >= 1, got {max_batch_size}, {max_cache_len}")
        if page_size < 1 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, got {page_size}")
        config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        self.num_layers = int(config.num_hidden_layers)
        super().__init__(layers=[_PagedMLALayer(self, i) for i in range(self.num_layers)])
        self.max_batch_size, self.max_cache_len, self.page_size = max_batch_size, max_cache_len, page_size
        self.kv_lora_rank, self.qk_rope_head_dim = int(config.kv_lora_rank), int(config.qk_rope_head_dim)
        self.fp8, self.device, self.dtype, self.backend = fp8, device, dtype, backend
        self.paged: PagedMLACache | None = None  # built on the first forward (dtype / device of the latents)
        self._seq_ids: list[int] = []  # one sequence per batch row, fixed by the first forward
        self._done: set[int] = set()  # layers finished in the open step

    # ---- lengths (what generate and the mask builders ask) --------------------------------------
    def committed_length(self) -> int:
        """Tokens cached per row (all rows hold the same number: unpadded batches)."""
        return self.paged.seqlen(self._seq_ids[0]) if self._seq_ids else 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.committed_length()

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.committed_length() + query_length, 0

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.max_cache_len

    @property
    def batch_size(self) -> int:
        return len(self._seq_ids) if self._seq_ids else -1

    def reset(self) -> None:
        """Forget every sequence (pages back to the pool; storage kept)."""
        if self.paged is not None:
            if self.paged.step_open:
                self.paged.rollback()
            for sid in self._seq_ids:
                self.paged.free(sid)
        self._seq_ids, self._done = [], set()

    # ---- the hook pygen.nn.MLA calls ----------------------------------------------------------
    def pygen_paged_step(self, layer_idx: int, latent: torch.Tensor, attention_mask=None) -> PagedMLACache:
        """Called by MLA.forward before its paged attention: opens the forward's step (first layer
        to arrive) and returns the PagedMLACache to append to and decode from."""
        b, s = latent.shape[:2]
        if not 0 <= layer_idx < self.num_layers:
            raise IndexError(f"layer_idx {layer_idx} out of range for a cache of {self.num_layers} layers")
        if self.paged is not None and self.paged.step_open and layer_idx in self._done:
            self.paged.rollback()  # a forward that raised left its step open
            self._done = set()
        if self.paged is None or not self.paged.step_open:
            self._begin(b, s, latent, attention_mask)
        elif tuple(self.paged.step_info()[:2]) != (self._seq_ids, s):
            raise ValueError(
                f"layer {layer_idx}: batch {b} x {s} new tokens differs from the step's "
                f"{len(self._seq_ids)} x {self.paged.step_info()[1]}"
            )
        return self.paged

    def pygen_paged_done(self, layer_idx: int) -> None:
        """Called by MLA.forward after its paged attention; the last layer commits the step."""
        self._done.add(layer_idx)
        if len(self._done) == self.num_layers:
            self.paged.commit()
            self._done = set()

    def _begin(self, b: int, s: int, latent: torch.Tensor, attention_mask) -> None:
        if self.paged is None:
            blocks = self.max_batch_size * math.ceil(self.max_cache_len / self.page_size)
            dtype = torch.uint8 if self.fp8 else (self.dtype or latent.dtype)
            self.paged = PagedMLACache(
                self.num_layers,
                blocks,
                self.page_size,
                self.kv_lora_rank,
                self.qk_rope_head_dim,
                dtype=dtype,
                device=self.device or latent.device,
                backend=self.backend,
            )
        if not self._seq_ids:
            if b > self.max_batch_size:
                raise ValueError(f"batch size {b} exceeds max_batch_size {self.max_batch_size}")
            self._seq_ids = [self.paged.allocate() for _ in range(b)]
        elif b != len(self._seq_ids):
            raise ValueError(f"batch size {b} differs from the cache's {len(self._seq_ids)} (reset() it first)")
        past = self.committed_length()
        if past + s > self.max_cache_len:
            raise ValueError(f"{past} cached + {s} new tokens exceed max_cache_len {self.max_cache_len}")
        if isinstance(attention_mask, torch.Tensor) and not mask_is_causal(attention_mask, s, past + s):
            raise ValueError(
                "PagedMLATransformersCache needs unpadded rows: the attention mask is not plain "
                "causal (left padding?); the paged path takes its mask from the cache's lengths"
            )
        self.paged.begin(self._seq_ids, s)
        self._done = set()

    def __repr__(self) -> str:
        return (
            f"PagedMLATransformersCache(layers={self.num_layers}, batch={self.batch_size}/{self.max_batch_size}, "
            f"len={self.committed_length()}/{self.max_cache_len}, page_size={self.page_size}, fp8={self.fp8})"
        )
