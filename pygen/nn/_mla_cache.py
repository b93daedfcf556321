"""A paged latent KV cache for MLA: a pool of fixed-size pages per layer, handed out to sequences.

Storage, per layer: ``kv[layer]`` [num_blocks, page_size, 1, R + Dr] (R = kv_lora_rank = 512,
Dr = qk_rope_head_dim = 64), or with ``dtype=torch.uint8`` the FP8 cache [num_blocks, page_size, 1,
656] (pygen.ops.mla's packed layout, quantised on append), FlashMLA's layout: token t of a sequence lives in page
``block_table[t // page_size]`` at row ``t % page_size``; its 576 values are the normalised latent
followed by the RoPE-rotated shared key. Every layer uses the same page ids (one block table per
sequence), so the manager tracks pages once.

Life of a sequence::

    sid = cache.allocate()                  # empty sequence, no pages yet
    cache.begin([sid, ...], num_new)        # reserve pages for num_new more tokens of each
    for layer: kv, table, lens = cache.append(layer, latent [b, n, R], k_rope [b, n, Dr])
    cache.commit()                          # the step's tokens now count as cached
                                            # (or cache.rollback(): they do not)
    cache.free(sid)                         # pages back to the pool

``begin`` fixes the batch order of the step (rows of ``latent`` follow ``seq_ids``); ``append``
writes with pygen.ops.mla_cache_append and returns what mla_decode takes: the layer's pages, the
int32 block table [b, max_pages] (unused entries are 0, a valid id the kernels never read because
cache_seqlens bounds them) and int32 cache_seqlens [b] *including* the step's tokens.

Invariants (tests/mla/test_mla_modules.py checks them after random allocate/append/free sequences):
every page is either free or owned by exactly one sequence; a sequence of length L owns
ceil(L / page_size) pages outside an open step; a failed ``begin`` (pool exhausted) and a
``rollback`` leave the bookkeeping as it was before ``begin``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

__all__ = ["PagedMLACache"]


class PagedMLACache:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        page_size: int = 64,
        kv_lora_rank: int = 512,
        qk_rope_head_dim: int = 64,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
        backend: str | None = None,
        storage: list[torch.Tensor] | None = None,
    ) -> None:
        """``storage``: per-layer page tensors to use instead of allocating zeros (e.g. a model's
        buffers, so they follow ``.to()``); shapes as described above."""
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, got {page_size}")
        if num_blocks <= 0 or num_layers <= 0:
            raise ValueError(f"num_blocks and num_layers must be positive, got {num_blocks}, {num_layers}")
        self.page_size, self.num_blocks, self.num_layers = page_size, num_blocks, num_layers
        self.kv_lora_rank, self.qk_rope_head_dim = kv_lora_rank, qk_rope_head_dim
        self.backend = backend
        width = kv_lora_rank + qk_rope_head_dim
        if dtype == torch.uint8:  # FP8 cache: 512 e4m3 + 4 float32 scales + 64 bf16 per token
            from ..ops.mla import FP8_TOKEN_BYTES

            width = FP8_TOKEN_BYTES
        if storage is not None:
            want = (num_blocks, page_size, 1, width)
            if len(storage) != num_layers or any(tuple(t.shape) != want for t in storage):
                raise ValueError(f"storage must be {num_layers} tensors of shape {want}")
            self.kv = list(storage)
        else:
            self.kv = [
                torch.zeros(num_blocks, page_size, 1, width, dtype=dtype, device=device) for _ in range(num_layers)
            ]
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: pop() gives low ids first
        self._pages: dict[int, list[int]] = {}
        self._len: dict[int, int] = {}
        self._ids = itertools.count()
        self._step = None  # (seq_ids, n, table, positions, lens)

    # ---- bookkeeping -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.kv[0].device

    def allocate(self) -> int:
        sid = next(self._ids)
        self._pages[sid], self._len[sid] = [], 0
        return sid

    def free(self, sid: int) -> None:
        self._check_sid(sid)
        if self._step is not None and sid in self._step[0]:
            raise RuntimeError(f"sequence {sid} is part of an uncommitted step; commit() first")
        self._free.extend(reversed(self._pages.pop(sid)))
        del self._len[sid]

    def seqlen(self, sid: int) -> int:
        self._check_sid(sid)
        return self._len[sid]

    def pages(self, sid: int) -> list[int]:
        self._check_sid(sid)
        return list(self._pages[sid])

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def _check_sid(self, sid: int) -> None:
        if sid not in self._len:
            raise KeyError(f"unknown or freed sequence id {sid}")

    def block_table(self, seq_ids: Sequence[int]) -> torch.Tensor:
        width = max([len(self._pages[s]) for s in seq_ids] + [1])
        table = torch.zeros(len(seq_ids), width, dtype=torch.int32)
        for i, s in enumerate(seq_ids):
            table[i, : len(self._pages[s])] = torch.tensor(self._pages[s], dtype=torch.int32)
        return table.to(self.device)

    # ---- one forward step ------------------------------------------------------------------
    def begin(self, seq_ids: Sequence[int], num_new: int) -> None:
        """Reserve pages so each sequence of ``seq_ids`` can take ``num_new`` more tokens."""
        if self._step is not None:
            raise RuntimeError("begin() called twice without commit()")
        seq_ids = list(seq_ids)
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"seq_ids must be distinct, got {seq_ids}")
        if num_new < 1:
            raise ValueError(f"num_new must be >= 1, got {num_new}")
        for s in seq_ids:
            self._check_sid(s)
        need = {s: math.ceil((self._len[s] + num_new) / self.page_size) - len(self._pages[s]) for s in seq_ids}
        if sum(need.values()) > len(self._free):
            raise RuntimeError(
                f"paged MLA cache exhausted: {sum(need.values())} pages needed, "
                f"{len(self._free)} free of {self.num_blocks}"
            )
        for s, n in need.items():
            self._pages[s].extend(self._free.pop() for _ in range(n))
        start = torch.tensor([self._len[s] for s in seq_ids], dtype=torch.int64)
        positions = (start[:, None] + torch.arange(num_new)).to(self.device)
        lens = (start + num_new).to(torch.int32).to(self.device)
        self._step = (seq_ids, num_new, self.block_table(seq_ids), positions, lens)

    def append(
        self, layer_idx: int, latent: torch.Tensor, k_rope: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write the step's latents of one layer; returns (kv_cache, block_table, cache_seqlens)."""
        if self._step is None:
            raise RuntimeError("PagedMLACache.append before begin(seq_ids, num_new)")
        seq_ids, n, table, positions, lens = self._step
        if not 0 <= layer_idx < self.num_layers:
            raise IndexError(f"layer_idx {layer_idx} out of range for a cache of {self.num_layers} layers")
        want = (len(seq_ids), n)
        if tuple(latent.shape[:2]) != want or tuple(k_rope.shape[:2]) != want:
            raise ValueError(
                f"latent / k_rope must be [{want[0]}, {want[1]}, ...] for this step, got "
                f"{tuple(latent.shape)} / {tuple(k_rope.shape)}"
            )
        from ..ops.mla import mla_cache_append

        kv = self.kv[layer_idx]
        if kv.dtype != torch.uint8:  # the FP8 cache quantises the model-dtype values itself
            latent, k_rope = latent.to(kv.dtype), k_rope.to(kv.dtype)
        mla_cache_append(kv, table, positions, latent.contiguous(), k_rope.contiguous(), backend=self.backend)
        return kv, table, lens

    @property
    def step_open(self) -> bool:
        """Whether begin() opened a step that is neither committed nor rolled back yet."""
        return self._step is not None

    def step_info(self) -> tuple[list[int], int, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(seq_ids, num_new, block_table, positions [b, n], cache_seqlens) of the open step."""
        if self._step is None:
            raise RuntimeError("no open step: call begin(seq_ids, num_new)")
        return self._step

    def rollback(self) -> None:
        """Drop the open step: its tokens do not count and the pages begin() reserved for it go
        back to the pool (what append() wrote there is garbage the next owner overwrites)."""
        if self._step is None:
            raise RuntimeError("rollback() without begin()")
        for s in reversed(self._step[0]):
            keep = -(-self._len[s] // self.page_size)
            self._free.extend(reversed(self._pages[s][keep:]))
            del self._pages[s][keep:]
        self._step = None

    def commit(self) -> None:
        if self._step is None:
            raise RuntimeError("commit() without begin()")
        seq_ids, n = self._step[:2]
        for s in seq_ids:
            self._len[s] += n
        self._step = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Longest committed sequence (transformers' Cache method name, for position ids)."""
        return max(self._len.values(), default=0)
