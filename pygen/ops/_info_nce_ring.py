"""InfoNCE over a torch.distributed process group (``pygen.ops.info_nce(..., group=g)``): the loss
of the batch concatenated over the ranks (rank order), computed with a ring of key blocks so that
no rank ever holds more than its own queries and two key blocks.

Forward, rank r of W, own queries h = q_r / T [n_r, d] and keys k_r [m_r, d]: at step s = 0..W-1
it holds the key block of rank src = (r - s) mod W, posts the send of that block to rank r + 1
and the receive of rank r - 1's (overlapping the compute), and runs the streaming op on it with
targets p - col0[src] (a positive outside the block is simply not found) and, for SimCLR, the
excluded column i + row0[r] - col0[src] (the global self-similarity). The per-block statistics
combine as lse = logaddexp over blocks, picked = sum over blocks.

Backward: with the combined lse, each block's gradient is the op's backward on that block alone
(p = exp(u - lse) is already the global softmax). The ring runs again; now each step also carries
a float32 accumulator of the gradient of the block it holds: the rank adds its queries'
contribution and passes block and accumulator on; after W steps one more shift brings every
accumulator home, holding the key gradient from every rank's queries. Query gradients stay local.

Every rank returns the global loss (a sum over ranks whose backward is the identity: each rank
backpropagates its own rows, and the ring delivers the cross-rank terms), so calling backward on
every rank gives each rank d(global loss) / d(own inputs).

Argument checks: one rank's arguments may be refused where the others' are not (its batch sizes,
its positives), and a rank that raised alone would leave the others waiting for it in a
collective. So every rank's refusal rides on the sizes' all-gather, the positives' value checks
(global indices: known only after it) on one all-reduce, and every rank raises the same error,
made of the refusing ranks' messages.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..ref import losses as ref
from . import _info_nce, _registry
from ._common_checks import checking_values

NAME = _info_nce.NAME
_REFUSALS = (ValueError, TypeError, RuntimeError)  # a rank's argument checks' errors (RuntimeError: no backend)
# dtypes a rank's embeddings may have, by code in the sizes' all-gather (the ranks must agree on it)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _sizes(group, *counts: int, device) -> list[list[int]]:
    """Every rank's ``counts`` (one all-gather of a few ints)."""
    mine = torch.tensor(counts, dtype=torch.long, device=device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(every, mine, group=group)
    return [t.tolist() for t in every]


class _Ring:
    """Shifts blocks one rank along the ring (to r + 1, from r - 1), asynchronously."""

    def __init__(self, group):
        self.group = group
        self.world = dist.get_world_size(group)
        rank = dist.get_rank(group)
        self.rank = rank
        self.next = dist.get_global_rank(group, (rank + 1) % self.world)
        self.prev = dist.get_global_rank(group, (rank - 1) % self.world)

    def shift(self, t: torch.Tensor, rows_in: int, tag: int = 0):
        """Start sending ``t`` on and receiving the previous rank's ([rows_in, ...]); returns a
        callable that waits and gives the received tensor. ``tag`` tells apart two shifts in flight."""
        got = t.new_empty((rows_in, *t.shape[1:]))
        # an empty block is not sent (gloo can stall on empty messages): both ends know its size
        ops = [dist.P2POp(dist.isend, t.contiguous(), self.next, self.group, tag)] if t.numel() else []
        if got.numel():
            ops.append(dist.P2POp(dist.irecv, got, self.prev, self.group, tag))
        works = dist.batch_isend_irecv(ops) if ops else []

        def wait():
            for w in works:
                w.wait()
            return got

        return wait


class _RingStats(torch.autograd.Function):
    """(lse, picked) [n] of the local rows h against every rank's key block (module docstring)."""

    @staticmethod
    def forward(ctx, h, k, targets, exclude_self, layout, ring, backend):
        rows0, cols0, cols = layout
        op = _registry.get(f"linear_logsumexp_{backend}")
        lse = torch.full((h.shape[0],), float("-inf"), dtype=ref.compute_dtype(h), device=h.device)
        picked = torch.zeros_like(lse)
        block = k.detach()
        for step in range(ring.world):
            src = (ring.rank - step) % ring.world
            nxt = ring.shift(block, cols[(src - 1) % ring.world]) if step < ring.world - 1 else None
            if cols[src]:  # a rank may hold no keys: its block adds nothing
                off = rows0 - cols0[src] if exclude_self else None
                lb, pb, _, _ = op(h, block, targets - cols0[src], None, 1.0, None, False, 0.0, off)
                lse, picked = torch.logaddexp(lse, lb), picked + pb
            if nxt is not None:
                block = nxt()
        ctx.save_for_backward(h, k, targets, lse)
        ctx.setup = (exclude_self, layout, ring, backend)
        return lse, picked

    @staticmethod
    def backward(ctx, g_lse, g_picked):
        h, k, targets, lse = ctx.saved_tensors
        exclude_self, (rows0, cols0, cols), ring, backend = ctx.setup
        bwd = _registry.get(f"linear_logsumexp_backward_{backend}")
        zeros = torch.zeros_like(lse)
        g_lse = zeros if g_lse is None else g_lse
        g_picked = zeros if g_picked is None else g_picked
        need_h = ctx.needs_input_grad[0]
        gh = torch.zeros(h.shape, dtype=lse.dtype, device=h.device) if need_h else None
        block, acc = k.detach(), torch.zeros(k.shape, dtype=lse.dtype, device=k.device)
        for step in range(ring.world):
            src = (ring.rank - step) % ring.world
            nxt = ring.shift(block, cols[(src - 1) % ring.world]) if step < ring.world - 1 else None
            if cols[src]:
                off = rows0 - cols0[src] if exclude_self else None
                gh_b, gk_b, _ = bwd(h, block, targets - cols0[src], None, lse, zeros, g_lse, g_picked, zeros, zeros,
                                    1.0, None, False, 0.0, off, need_h, True, False)  # fmt: skip
                if need_h:
                    gh += gh_b
                acc += gk_b
            if ring.world > 1:  # the accumulator follows its block; the last shift brings it home
                acc = ring.shift(acc, cols[(src - 1) % ring.world], tag=1)()
            if nxt is not None:
                block = nxt()
        return (gh.to(h.dtype) if need_h else None), acc.to(k.dtype), None, None, None, None, None


class _SumOverRanks(torch.autograd.Function):
    """The all-reduced sum in the forward, the identity in the backward (module docstring)."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, g):
        return g, None


def _layout(sizes, rank: int, row: int, col: int):
    """(row0 of this rank, col0 of every rank, cols of every rank) for the row / column counts at
    positions ``row`` / ``col`` of each rank's sizes (0: queries, 1: keys)."""
    cols = [s[col] for s in sizes]
    cols0 = [sum(cols[:i]) for i in range(len(cols))]
    return sum(s[row] for s in sizes[:rank]), cols0, cols


def _refuse(group, kind: type, mine: Exception | None):
    """Raise the same ``kind`` error on every rank (each calls this once a collective has told them
    all that some rank refused), made of the messages of the ranks that refused (``mine`` on this
    one): one object all-gather, on the error path only."""
    said = (str(mine) or type(mine).__name__).removeprefix(f"{NAME}: ") if mine else ""
    lines = [""] * dist.get_world_size(group)
    dist.all_gather_object(lines, said, group=group)
    raise kind(f"{NAME}: " + "; ".join(f"rank {r} of {len(lines)}: {t}" for r, t in enumerate(lines) if t)) from mine


def _collective_device(group, queries) -> torch.device:
    """Where the agreement collectives run: NCCL needs this rank's current GPU, whatever the rank
    was given; gloo runs them beside the queries (CPU when they are not a usable tensor)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    usable = isinstance(queries, torch.Tensor) and queries.device.type != "meta"
    return queries.device if usable else torch.device("cpu")


def _shape_and_settings(queries, keys, temp, symmetric, batch_negatives, reduction) -> tuple[int, int, tuple]:
    """(rows, key rows, the settings every rank must share: width, dtype code, symmetric,
    batch_negatives, reduction code, and whether the loss needs a gradient: a rank whose loss
    does not would never run the backward ring its peers wait in)."""
    m = queries.shape[0] if keys is None else keys.shape[0]
    agree = (queries.shape[1], _DTYPES.index(queries.dtype), int(symmetric), int(batch_negatives))
    learned = (t for t in (queries, keys, temp) if isinstance(t, torch.Tensor))
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in learned)
    return queries.shape[0], m, (*agree, ref.REDUCTIONS.index(reduction), int(grad))


def _disagreement(sizes) -> str:
    names = ("embedding width", "dtype", "symmetric", "batch_negatives", "reduction",
             "whether a gradient is needed (queries, keys or temperature requiring grad, in grad mode)")  # fmt: skip
    differ = [name for i, name in enumerate(names) if len({s[4 + i] for s in sizes}) > 1]
    return f"the ranks disagree on {', '.join(differ)}: every rank must call with the same ones"


def _global_positives(positives, n: int, simclr: bool, own_cols0: int, total: int, device, check, group):
    """Indices into the concatenated keys; the default pairs each query with a key of its own rank.
    ``check``: (this rank, some rank) checks the values of its positives. They are per-rank data, so
    the ranks agree on the outcome (one all-reduce, one host read) before any of them enters the ring."""
    if positives is None:
        p = ref.info_nce_positives(n, simclr, device) + own_cols0
    else:
        p = positives.long()
    mine, anyone = check
    if not anyone:
        return p
    found = torch.zeros(3, dtype=torch.bool, device=device)
    if mine:  # SimCLR: the keys are the queries, so query i's own key is own_cols0 + i
        found = _info_nce.positive_problems(p, total, own_cols0, simclr, False)
    bad = found.any().to(device=device, dtype=torch.int32)
    dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=group)
    if bad.item():
        refused = None
        try:
            _info_nce.refuse_positives(p, found.tolist(), total, "the keys of every rank")
        except ValueError as e:
            refused = e
        _refuse(group, ValueError, refused)
    return p


def info_nce(queries, keys, temperature, positives, queue, symmetric, normalize, batch_negatives, reduction, *, group,
             backend):  # fmt: skip
    """pygen.ops.info_nce with ``group``: the arguments are checked here, a refusal on any rank
    raised on every rank (module docstring)."""
    from .losses import _pick, _stats  # (losses imports this module)

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(f"{NAME}: group= needs torch.distributed to be initialised")
    refused = None
    try:
        temp = _info_nce.check(queries, keys, temperature, positives, queue, symmetric, normalize, batch_negatives,
                               reduction, True)  # fmt: skip
        backend = _pick(NAME, queries, backend)
        if backend not in ("cpu", "triton"):
            raise ValueError(f"{NAME}: group= needs a kernel backend ('cpu' or 'triton'), got {backend!r}")
        if symmetric and positives is not None:
            raise ValueError(f"{NAME}: symmetric=True with group= supports the default positives (key i of each rank)")
        if not batch_negatives and positives is not None:
            raise ValueError(f"{NAME}: batch_negatives=False with group= supports the default positives")
        # what decides which collectives run (the ring's block shapes, a second ring, the final
        # all-reduce) must be the same on every rank: it rides on the sizes' all-gather too
        n, m, agree = _shape_and_settings(queries, keys, temp, symmetric, batch_negatives, reduction)
    except Exception as e:  # any one-rank failure, so that the others do not wait in a collective
        refused, n, m, agree = e, 0, 0, (0,) * 6
    device = _collective_device(group, queries)
    simclr = keys is None
    # code 1, 2, 3: the _REFUSALS class of this rank's refusal (3, RuntimeError, for any other one)
    code = 0 if refused is None else next((i for i, k in enumerate(_REFUSALS, 1) if isinstance(refused, k)), 3)
    check = refused is None and positives is not None and checking_values(positives)
    ring = _Ring(group)
    sizes = _sizes(group, n, m, code, check, *agree, device=device)
    codes = [s[2] for s in sizes if s[2]]
    if codes:
        _refuse(group, _REFUSALS[codes[0] - 1], refused)
    if any(s[4:] != sizes[0][4:] for s in sizes):  # every rank sees the same sizes: no collective needed
        raise ValueError(f"{NAME}: {_disagreement(sizes)}")
    q = _info_nce.unit(queries, normalize)
    k = q if simclr else _info_nce.unit(keys, normalize)
    layout = _layout(sizes, ring.rank, 0, 1)
    own_cols0 = layout[1][ring.rank]
    anyone = any(s[3] for s in sizes)
    p = _global_positives(positives, n, simclr, own_cols0, sum(layout[2]), device, (check, anyone), group)
    h = q / temp

    def stats(h_, w, t, exclude):
        if w is k and batch_negatives:  # the ring over every rank's key blocks
            lse, picked = _RingStats.apply(h_, w, t, exclude is not None, layout, ring, backend)
            return lse, picked, None, None
        return _stats(backend, h_, w, t, None, 1.0, None, False, 0.0, exclude)  # the local queue pass

    rows = _info_nce.rows(stats, h, k, _info_nce.unit(queue, normalize), p - (0 if batch_negatives else own_cols0),
                          simclr, batch_negatives, distributed=True)  # fmt: skip
    if symmetric:  # keys as queries against the ring of every rank's queries; default pairing
        back = _layout(sizes, ring.rank, 1, 0)
        t = ref.info_nce_positives(n, False, q.device) + back[1][ring.rank]
        lse, picked = _RingStats.apply(k / temp, q, t, False, back, ring, backend)
        rows = (rows + lse - picked) / 2
    if reduction == "none":
        return rows.to(queries.dtype)
    total = _SumOverRanks.apply(rows.sum(), group)
    if reduction == "mean":
        total = total / sum(s[0] for s in sizes)
    return total.to(queries.dtype)
