"""InfoNCE on the losses family's streaming op (pygen.ops.losses.info_nce is the public entry): the
argument checks and the per-query loss rows from the row statistics of
``pygen::linear_logsumexp_<backend>`` with hidden = q / T, weight = k (pygen/ref/losses.py states
the math), so the [N, M] similarity matrix is never held: memory O((N + M + K) d).

    rows_i = lse_i - picked_i,   lse / picked of (q / T) k^T with targets p
    (SimCLR: exclude_offset 0, the self-similarity left out inside the kernels)
    queue (MoCo): lse_i <- logaddexp(lse_i, lse of (q / T) c^T)  (a second pass, no target in it)
    batch_negatives=False (MoCo v1/v2): picked_i = q_i . k_{p_i} / T, lse_i = logaddexp(picked_i,
    lse of the queue)

Autograd composes these (the op's backward takes g_lse = exp(lse_block - lse) for each pass, i.e.
the softmax over all of them), and torch's normalisation and division by T carry the gradient back
to the raw embeddings and to a tensor temperature.
"""

from __future__ import annotations

import torch

from ..ref import losses as ref
from . import _losses_checks as chk
from ._common_checks import checking_values, flag, positive_float, same_device, tensor

NAME = "info_nce"


def _embeddings(t, what: str, queries: torch.Tensor | None) -> None:
    tensor(NAME, t, what, dim=2, dtypes=chk.FLOAT_DTYPES)
    if queries is None:
        return
    if t.shape[1] != queries.shape[1]:
        raise ValueError(
            f"{NAME}: {what} must have queries' embedding size d = {queries.shape[1]} as its dim 1, "
            f"got shape {tuple(t.shape)} (queries {tuple(queries.shape)})"
        )
    if t.dtype != queries.dtype:
        raise TypeError(f"{NAME}: {what} must have queries' dtype {queries.dtype}, got {t.dtype}")
    same_device(NAME, what, t, "queries", queries)


def _temperature(t, queries: torch.Tensor):
    """A real > 0, or a 0-dim float tensor (learned; > 0 checked on the host when value checks run)."""
    if not isinstance(t, torch.Tensor):
        return positive_float(NAME, t, "temperature")
    tensor(NAME, t, "temperature", dim=0, dtypes=chk.FLOAT_DTYPES)
    same_device(NAME, "temperature", t, "queries", queries)
    if checking_values(t) and not bool(t > 0):
        raise ValueError(f"{NAME}: temperature must be > 0, got {float(t)}")
    return t


def _positives(p, n: int, m: int, simclr: bool, symmetric: bool, queries: torch.Tensor, distributed: bool):
    tensor(NAME, p, "positives", dim=1, dtypes=chk.INDEX_DTYPES)
    if p.shape[0] != n:
        raise ValueError(f"{NAME}: positives must have shape ({n},) (one per query), got {tuple(p.shape)}")
    same_device(NAME, "positives", p, "queries", queries)
    if not distributed:  # under a process group they index every rank's keys: the ring checks them
        positive_values(p, m, 0, simclr, symmetric, "keys' rows")


def positive_values(p: torch.Tensor, m: int, own: int, simclr: bool, symmetric: bool, keys: str) -> None:
    """The value checks of positives p [n] (where checking_values says so): inside [0, m) (``keys``
    names the m rows), not query i's own key own + i (SimCLR: excluded), each key once
    (``symmetric``). One host read, one synchronisation on a GPU (sort, unlike unique, needs none)."""
    if p.shape[0] and checking_values(p):
        refuse_positives(p, positive_problems(p, m, own, simclr, symmetric).tolist(), m, keys)


def positive_problems(p: torch.Tensor, m: int, own: int, simclr: bool, symmetric: bool) -> torch.Tensor:
    """positive_values' three findings [out of range, self-paired, repeated] as a bool tensor on
    p's device, not read (a process group agrees on them before any rank reads them)."""
    self_paired = repeated = torch.zeros((), dtype=torch.bool, device=p.device)
    if simclr:
        self_paired = (p == torch.arange(own, own + p.shape[0], device=p.device)).any()
    if symmetric:
        s = torch.sort(p).values
        repeated = (s[1:] == s[:-1]).any()
    return torch.stack([((p < 0) | (p >= m)).any(), self_paired, repeated])


def refuse_positives(p: torch.Tensor, problems: list[bool], m: int, keys: str) -> None:
    """The ValueError for the first of positive_problems' findings, read on the host (if any)."""
    bad_range, self_paired, repeated = problems
    if bad_range:
        raise ValueError(f"{NAME}: positives holds {int(p[(p < 0) | (p >= m)][0])}, outside [0, {m}) ({keys})")
    if self_paired:
        raise ValueError(f"{NAME}: positives must not point a query at itself (keys=None excludes the self-similarity)")
    if repeated:
        raise ValueError(f"{NAME}: symmetric=True needs positives to be a permutation of the keys (each key once)")


def check(queries, keys, temperature, positives, queue, symmetric, normalize, batch_negatives, reduction,
          distributed: bool):  # fmt: skip
    """Validate every argument (ValueError / TypeError naming it); returns the temperature. Under a
    process group the positives' values are checked later, against every rank's keys (and every
    refusal is agreed by the ranks: pygen/ops/_info_nce_ring.py)."""
    _embeddings(queries, "queries", None)
    simclr = keys is None
    if not simclr:
        _embeddings(keys, "keys", queries)
    if queue is not None:
        _embeddings(queue, "queue", queries)
    temp = _temperature(temperature, queries)
    for v, what in ((symmetric, "symmetric"), (normalize, "normalize"), (batch_negatives, "batch_negatives")):
        flag(NAME, v, what)
    chk.choice(NAME, reduction, "reduction", ref.REDUCTIONS)
    n = queries.shape[0]
    m = n if simclr else keys.shape[0]
    if symmetric and (simclr or queue is not None or not batch_negatives or m != n):
        raise ValueError(
            f"{NAME}: symmetric=True (CLIP) needs keys with as many rows as queries ({n}, got "
            f"{None if simclr else m}), no queue and batch_negatives=True"
        )
    if not batch_negatives and (simclr or queue is None):
        raise ValueError(f"{NAME}: batch_negatives=False (MoCo v1/v2) needs keys and a queue of negatives")
    if positives is not None:
        _positives(positives, n, m, simclr, symmetric, queries, distributed)
    elif simclr and n % 2:
        raise ValueError(f"{NAME}: keys=None (SimCLR) with default positives needs an even batch [x1; x2], got N = {n}")
    elif not simclr and m != n:
        raise ValueError(f"{NAME}: positives=None pairs query i with key i: keys needs N = {n} rows, got {m}")
    return temp


def unit(x: torch.Tensor | None, normalize: bool) -> torch.Tensor | None:
    if x is None or not normalize:
        return x
    return torch.nn.functional.normalize(x, dim=-1)


def queue_lse(stats, h: torch.Tensor, queue: torch.Tensor | None, lse: torch.Tensor) -> torch.Tensor:
    """lse combined with the logsumexp over the queue's negatives (a pass with no target in it)."""
    if queue is None or queue.shape[0] == 0:  # an empty queue adds no negative (and nothing to stream)
        return lse
    none = torch.full((h.shape[0],), -1, dtype=torch.long, device=h.device)
    return torch.logaddexp(lse, stats(h, queue, none, None)[0])


def rows(stats, h, k, queue, p, simclr: bool, batch_negatives: bool, distributed: bool = False) -> torch.Tensor:
    """Per-query losses (module docstring); ``h`` = q / T, ``stats(h, w, targets, exclude_offset)``
    returns the op's four row statistics. ``distributed``: the ring runs even with no local rows
    (the other ranks need this rank's key blocks)."""
    acc = ref.compute_dtype(h)
    if h.shape[0] == 0 and not distributed:  # nothing to stream (keys may be empty too)
        return h.sum(dim=1).to(acc)  # (keeps the graph for backward)
    if batch_negatives:
        lse, picked, _, _ = stats(h, k, p, 0 if simclr else None)
    else:
        picked = (h.to(acc) * k[p].to(acc)).sum(dim=1)
        lse = picked
    return queue_lse(stats, h, queue, lse) - picked
