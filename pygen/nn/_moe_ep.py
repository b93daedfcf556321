"""Expert parallelism for pygen.nn.MoE: dispatch tokens to the ranks that own their experts and
combine the results, with torch.distributed.all_to_all_single (gloo on CPU, NCCL on GPUs).

Partition: W ranks, E experts; rank r owns the contiguous experts [starts[r], starts[r+1]) with
starts from ``expert_partition`` (E // W each, the first E % W ranks one more). The gate and the
shared experts are replicated; every rank routes its own tokens.

One forward on rank r, with local tokens x [T, H], ids [T, k] (global), weights w [T, k]:

    owner[t, j] = rank owning ids[t, j]
    need[t, d]  = any_j owner[t, j] == d                      token t goes to rank d once
    send rows   = (d, t) for need[t, d], ordered by d then t  (S rows; count c[d] per rank)
    routing     = [w[t, j] if owner == d else 0  |  ids[t, j] - starts[d] if owner == d else -1]
                  (one float32 row of 2k values per sent row, float64 for float64 weights;
                  local ids < 2^24 are exact)
    counts      all_to_all_single(c) -> receive counts (the only host synchronisation: the
                split sizes of the next exchanges are Python ints)
    dispatch    all_to_all_single of x[send rows] and of the routing rows        -> R rows
    experts     every valid (row, slot) pair of the R received rows is one fused_moe slot
                (top_k = 1 over the pair list), summed back per row with index_add
    combine     all_to_all_single of the R output rows back to their senders    -> S rows
    out[t]      = sum over the rows sent for t (index_add)

Each token crosses the network once per destination rank, not once per expert, and only the
experts it chose compute on it. Backward: the two exchanges are autograd Functions whose
backward is the transposed all_to_all_single (split sizes swapped), so gradients of x, of the
routing weights (hence of the gate) and of the local experts flow across ranks. Every rank
runs every collective in the same order in forward and backward, also a rank that sends or
receives nothing (its empty tensors stay connected to the autograd graph), otherwise a peer
would wait forever.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = [
    "expert_partition",
    "group_size",
    "group_rank",
    "all_to_all",
    "dispatch_plan",
    "local_experts",
    "ep_experts_forward",
]


def check_group(group, name: str = "ep_group"):
    """``group`` as a process group this rank belongs to (else a clear error naming ``name``):
    torch's own answers are an AttributeError for a non-group and world size -1 for a group
    without this rank."""
    if (isinstance(group, int) and group == dist.GroupMember.NON_GROUP_MEMBER) or (
        isinstance(group, dist.ProcessGroup) and dist.get_rank(group) < 0
    ):  # what dist.new_group returns on a rank it leaves out
        raise ValueError(f"{name} does not contain this rank (global rank {dist.get_rank()})")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"{name} must be a torch.distributed ProcessGroup (or None), got {type(group).__name__}")
    return group


def group_size(group) -> int:
    return dist.get_world_size(group)


def group_rank(group) -> int:
    return dist.get_rank(group)


def expert_partition(num_experts: int, world_size: int) -> list[int]:
    """starts [W+1]: rank r owns experts starts[r] .. starts[r+1]-1 (sizes differ by at most 1)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if num_experts < world_size:
        raise ValueError(
            f"expert parallelism needs at least one expert per rank: "
            f"n_routed_experts={num_experts} < group size {world_size}"
        )
    base, extra = divmod(num_experts, world_size)
    starts = [0]
    for r in range(world_size):
        starts.append(starts[-1] + base + (1 if r < extra else 0))
    return starts


class _AllToAll(torch.autograd.Function):
    """all_to_all_single of several tensors with the same split sizes along dim 0; backward is
    the same exchange with input and output splits swapped."""

    @staticmethod
    def forward(ctx, group, out_splits, in_splits, *tensors):
        ctx.group, ctx.out_splits, ctx.in_splits = group, out_splits, in_splits
        return tuple(_exchange(t, out_splits, in_splits, group) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        back = tuple(_exchange(g.contiguous(), ctx.in_splits, ctx.out_splits, ctx.group) for g in grads)
        return (None, None, None) + back


def _exchange(t: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    out = t.new_empty((sum(out_splits),) + tuple(t.shape[1:]))
    dist.all_to_all_single(out, t.contiguous(), out_splits, in_splits, group=group)
    return out


def all_to_all(tensors, out_splits: list[int], in_splits: list[int], group) -> tuple[torch.Tensor, ...]:
    """Differentiable all_to_all_single of each tensor (rows split by ``in_splits`` to the ranks,
    ``out_splits`` rows received from each)."""
    return _AllToAll.apply(group, list(out_splits), list(in_splits), *tensors)


def dispatch_plan(topk_ids: torch.Tensor, topk_weights: torch.Tensor, starts: list[int]):
    """Who sends what (device-only, no collective): returns

        tok          [S] int64   the token of each send row (rows ordered by destination, then token)
        send_counts  [W] int64   rows for each destination rank
        route        [S, 2k]     weights of the destination's slots (0 elsewhere) | their local
                                 expert ids (-1 elsewhere), float32 (float64 for float64 weights)

    A token appears once per rank owning at least one of its experts."""
    world = len(starts) - 1
    t, k = topk_ids.shape
    dev = topk_ids.device
    ids = topk_ids.long()
    st = torch.tensor(starts, device=dev)
    owner = torch.bucketize(ids, st[1:], right=True)  # [T, k] in [0, W)
    need = torch.zeros(t, world, dtype=torch.bool, device=dev)
    need.scatter_(1, owner, True)  # [T, W]
    dst, tok = need.t().nonzero(as_tuple=True)  # ordered by dst, then token
    send_counts = need.sum(0)  # [W]
    mine = owner[tok] == dst.unsqueeze(1)  # [S, k]
    rdt = torch.promote_types(topk_weights.dtype, torch.float32)  # float64 stays float64
    w_send = topk_weights[tok].to(rdt) * mine
    id_send = torch.where(mine, ids[tok] - st[dst].unsqueeze(1), -1).to(rdt)
    return tok, send_counts, torch.cat([w_send, id_send], 1)


def local_experts(experts, x_recv: torch.Tensor, route_recv: torch.Tensor) -> torch.Tensor:
    """Output rows [R, H] for the R received rows: every valid (row, slot) pair is one fused_moe
    slot of this rank's experts (top_k = 1 over the pairs), summed back per row."""
    k = route_recv.shape[1] // 2
    w_recv, id_recv = route_recv[:, :k], route_recv[:, k:].detach().long()
    rows, slots = (id_recv >= 0).nonzero(as_tuple=True)
    if rows.numel():
        y_pairs = experts(
            x_recv[rows], id_recv[rows, slots].unsqueeze(1).int(), w_recv[rows, slots].unsqueeze(1), check_ids=False
        )
        return x_recv.new_zeros(x_recv.shape).index_add(0, rows, y_pairs.to(x_recv.dtype))
    # Nothing to compute, but the result must need a gradient exactly when a peer's does, so that
    # this rank's backward runs the same exchanges: the received tensors and the expert weights
    # stay in the graph (the weights through one element each: the experts may be all that trains)
    y = x_recv * 0 + (w_recv.sum() * 0).to(x_recv.dtype)
    if torch.is_grad_enabled():
        for p in experts.parameters():
            if p.requires_grad:
                y = y + (p.reshape(-1)[:1].sum() * 0).to(y.dtype)
    return y


def ep_experts_forward(
    experts, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, group
) -> torch.Tensor:
    """The routed-expert output [T, H] of this rank's tokens, with experts spread over ``group``
    (``experts`` is this rank's pygen.nn.moe.MoEExperts slice). See the module docstring."""
    world = group_size(group)
    if world == 1:
        return experts(x, topk_ids, topk_weights, check_ids=False)
    starts = expert_partition(experts.num_global_experts, world)
    tok, send_counts, route_send = dispatch_plan(topk_ids, topk_weights, starts)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    in_splits, out_splits = send_counts.tolist(), recv_counts.tolist()
    x_recv, route_recv = all_to_all((x[tok], route_send), out_splits, in_splits, group)
    y_recv = local_experts(experts, x_recv, route_recv)
    (y_back,) = all_to_all((y_recv,), in_splits, out_splits, group)
    return x.new_zeros((x.shape[0], x.shape[1])).index_add(0, tok, y_back.to(x.dtype))


def _torchrun_check() -> None:
    """``torchrun --nproc-per-node N -m pygen.nn._moe_ep``: every rank runs a slice of one batch
    through an expert-parallel MoE and compares output and input gradient with the
    single-process layer (NCCL when every rank has a GPU, gloo otherwise)."""
    import os

    from .moe import MoE

    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() > int(os.environ.get("LOCAL_RANK", 0))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    fields = dict(
        hidden_size=64,
        moe_intermediate_size=32,
        n_routed_experts=4 * world + 1,
        num_experts_per_tok=4,
        n_shared_experts=1,
        routed_scaling_factor=2.5,
    )
    torch.manual_seed(0)
    full = MoE(**fields, backend="reference").to(dev)
    ep = MoE(**fields, ep_group=dist.group.WORLD).to(dev)
    ep.load_state_dict(full.state_dict())
    sizes = [(7 * r + 3) % 11 for r in range(world)]  # uneven, some ranks may get none
    x = torch.randn(sum(sizes), 64, generator=torch.Generator().manual_seed(1)).to(dev)
    lo = sum(sizes[:rank])
    xl = x[lo : lo + sizes[rank]].clone().requires_grad_()
    out = ep(xl)
    out.square().sum().backward()
    xr = x.clone().requires_grad_()
    ref = full(xr)
    ref.square().sum().backward()
    err = torch.tensor(
        [
            (out - ref[lo : lo + sizes[rank]]).abs().max().item() if out.numel() else 0.0,
            (xl.grad - xr.grad[lo : lo + sizes[rank]]).abs().max().item() if out.numel() else 0.0,
        ],
        device=dev,
    )
    dist.all_reduce(err, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(
            f"pygen EP check: {world} ranks, {fields['n_routed_experts']} experts, tokens per rank "
            f"{sizes}: max |out - single| = {err[0].item():.3g}, max |dx - single| = {err[1].item():.3g}"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    _torchrun_check()
