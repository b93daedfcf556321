"""info_nce over a process group (the ring of key blocks): 2 and 4 gloo processes on CPU must give
the single-process loss of the concatenated batch (float64 reference) on every rank, and each
rank's gradients must be its slice of the single-process gradients of queries, keys and queue
(the queue is replicated: its gradient summed over ranks), and of a tensor temperature (summed).

Scenarios (one spawn per world size, float64, cpu backend; uneven rows per rank, one rank empty):
    clip     symmetric, a learned 0-dim temperature
    simclr   keys=None (the global self-similarity excluded on the rank holding it; each rank's
             batch is its own [x1; x2], the default positives)
    moco     in-batch keys + a queue, explicit positives pointing at other ranks' keys, "sum"
    moco_v2  batch_negatives=False + a queue; reduction "none" (each rank's own rows)
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.distributed as dist
from helpers import run_gloo_ranks

SIZES = {"clip": [3, 0, 5, 2], "simclr": [4, 2, 0, 6], "moco": [2, 3, 1, 4], "moco_v2": [3, 1, 2, 2]}
D, QUEUE = 6, 7


def _split(sizes: list[int], world: int) -> list[int]:
    return sizes if world == 4 else [sizes[0] + sizes[1], sizes[2] + sizes[3]]


def _problem(name: str, world: int):
    sizes = _split(SIZES[name], world)
    n = sum(sizes)
    g = torch.Generator().manual_seed(7)
    q = torch.randn(n, D, generator=g, dtype=torch.float64)
    k = torch.randn(n, D, generator=g, dtype=torch.float64) + 0.5 * q
    queue = torch.randn(QUEUE, D, generator=g, dtype=torch.float64)
    temp = torch.tensor(0.3, dtype=torch.float64)
    opts = {
        "clip": dict(symmetric=True),
        "simclr": dict(),
        "moco": dict(positives=torch.randperm(n, generator=g), queue=queue, reduction="sum"),
        "moco_v2": dict(queue=queue, batch_negatives=False, reduction="none"),
    }[name]
    if name == "simclr":
        k = None
    return sizes, q, k, temp, opts


def _rank_views(sizes: list[int]) -> torch.Tensor:
    """SimCLR's default positives under a group: each rank's batch is its own [x1; x2]."""
    from pygen.ref.losses import info_nce_positives

    return torch.cat([info_nce_positives(n, True) + sum(sizes[:r]) for r, n in enumerate(sizes)])


def _leaf(t):
    return None if t is None else t.detach().clone().requires_grad_()


def _run(name: str, rank: int, world: int, group) -> list[str]:
    from pygen import ops
    from pygen.ref import losses as ref

    sizes, q, k, temp, opts = _problem(name, world)
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    queue = opts.pop("queue", None)
    local = dict(opts, positives=opts["positives"][lo:hi] if "positives" in opts else None)
    ql, kl, ul, tl = (_leaf(t) for t in (q[lo:hi], None if k is None else k[lo:hi], queue, temp))
    got = ops.info_nce(ql, kl, temperature=tl, queue=ul, group=group, backend="cpu", **local)
    qr, kr, ur, tr = (_leaf(t) for t in (q, k, queue, temp))
    if k is None:
        opts["positives"] = _rank_views(sizes)
    want = ref.info_nce(qr, kr, temperature=tr, queue=ur, **opts)
    per_row = opts.get("reduction") == "none"
    # one projection of the global result: each rank backpropagates its own rows ("none") or
    # the global scalar it holds (its backward is the identity; the ring adds the rest)
    proj = torch.randn(want.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (got * (proj[lo:hi] if per_row else proj)).sum().backward()
    (want * proj).sum().backward()
    errs: list[str] = []

    def check(what, a, b, tol=1e-10):
        if a is None or a.shape != b.shape or not torch.allclose(a, b, atol=tol, rtol=tol):
            err = "missing" if a is None else ((a - b).abs().max().item() if a.shape == b.shape else "shape")
            errs.append(f"[{name} rank {rank}/{world}] {what}: max err {err}")

    check("loss", got.detach(), (want[lo:hi] if per_row else want).detach())
    check("d queries", ql.grad, qr.grad[lo:hi])
    if k is not None:
        check("d keys", kl.grad, kr.grad[lo:hi])
    for what, mine, full in (("d queue", ul, ur), ("d temperature", tl, tr)):
        if mine is not None:  # replicated on every rank: the sum over ranks is the gradient
            total = mine.grad.clone()
            dist.all_reduce(total, group=group)
            check(f"{what} (summed over ranks)", total, full.grad)
    return errs


def _run_all(rank: int, world: int, group) -> list[str]:
    return [e for name in SIZES for e in _run(name, rank, world, group)]


@pytest.mark.parametrize("world", [2, 4])
def test_ring_matches_single_process(world):
    run_gloo_ranks(_run_all, world, ["pygen.ops"])


def _simclr_positives(rank: int, world: int, group) -> list[str]:
    """Under a group SimCLR positives index the concatenated batch: query i of rank r is global row
    row0 + i, so a positive equal to that (its excluded self-similarity) is refused, and one equal
    to a local index i (another rank's key) is not."""
    from pygen import ops

    sizes = [4, 6]
    row0, n = sum(sizes[:rank]), sizes[rank]
    q = torch.randn(n, D, generator=torch.Generator().manual_seed(rank), dtype=torch.float64)
    errs: list[str] = []
    legal = (torch.arange(n) + n // 2) % n + row0 if rank == 0 else torch.arange(n) % sizes[0]
    try:
        ops.info_nce(q, temperature=0.5, positives=legal, group=group, backend="cpu")
    except ValueError as e:
        errs.append(f"rank {rank}: positives {legal.tolist()} refused: {e}")
    with pytest.raises(ValueError, match="itself"):
        ops.info_nce(q, temperature=0.5, positives=torch.arange(n) + row0, group=group, backend="cpu")
    return errs


def test_simclr_positives_are_global_indices():
    run_gloo_ranks(_simclr_positives, 2, ["pygen.ops"])


def _one_rank_refused(rank: int, world: int, group) -> list[str]:
    """Positives that only rank 1 gets wrong (data the other ranks never see) are refused on every
    rank, with the same error, before any rank enters the ring: rank 0 used to go on into the ring
    and wait there for rank 1 forever. A legal call afterwards shows the ranks are still in step."""
    from pygen import ops

    sizes = [4, 6]
    row0, n = sum(sizes[:rank]), sizes[rank]
    g = torch.Generator().manual_seed(rank)
    q, k = (torch.randn(n, D, generator=g, dtype=torch.float64) for _ in range(2))
    own = torch.arange(n) + row0  # key i of this rank: legal without SimCLR
    views = (torch.arange(n) + n // 2) % n + row0  # the other view on this rank: legal with SimCLR
    cases = [  # keys, rank 1's positives (rank 0 passes legal ones), the error every rank must raise
        (k, torch.full((n,), 10), ValueError, r"rank 1 of 2: positives holds 10, outside \[0, 10\)"),
        (None, own, ValueError, "rank 1 of 2: positives must not point a query at itself"),
        (k, own[1:], ValueError, r"rank 1 of 2: positives must have shape \(6,\)"),
        (k, own.float(), TypeError, "rank 1 of 2: positives must have dtype"),
    ]
    errs: list[str] = []
    for keys, bad, err, match in cases:
        legal = own if keys is not None else views
        try:
            ops.info_nce(q, keys, temperature=0.5, positives=bad if rank else legal, group=group, backend="cpu")
            errs.append(f"rank {rank}: rank 1's positives {bad.tolist()} were not refused")
        except err as e:
            if not re.search(match, str(e)):
                errs.append(f"rank {rank}: {type(e).__name__} {e!r} does not match {match!r}")
    # settings that decide the collectives (reduction "none" skips the final all-reduce, symmetric
    # adds a ring, the width sets the ring's blocks) must agree across ranks
    disagreeing = [
        (dict(reduction="none" if rank else "mean"), "reduction"),
        (dict(symmetric=bool(rank)), "symmetric"),
        (dict(queries=q[:, : D - rank]), "embedding width"),
        # a rank whose loss needs no gradient never runs the backward ring its peers wait in
        (dict(keys=k.clone().requires_grad_(rank == 0)), "whether a gradient is needed"),
    ]
    for kw, what in disagreeing:
        args = dict(queries=q, keys=k if "queries" not in kw else k[:, : D - rank], temperature=0.5) | kw
        try:
            ops.info_nce(**args, group=group, backend="cpu")
            errs.append(f"rank {rank}: ranks disagreeing on {what} were not refused")
        except ValueError as e:
            if f"the ranks disagree on {what}" not in str(e):
                errs.append(f"rank {rank}: {e!r} does not name {what}")
    ops.info_nce(q, k, temperature=0.5, positives=own, group=group, backend="cpu")
    return errs


def test_one_rank_bad_positives_raise_on_every_rank():
    # the calls take well under a second: a rank left waiting for its peer fails the test in 30 s
    run_gloo_ranks(_one_rank_refused, 2, ["pygen.ops"], timeout_s=30)
