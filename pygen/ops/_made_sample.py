"""Autoregressive sampling from a MADE with every hidden unit computed once (pygen.ops.made_sample).

The reference sampler (pygen.ref.made.made_sample) runs the whole network D times. Here the
hidden units of every layer are sorted by degree, and step s (sampling the input of the s-th
smallest degree a_s, whose output units have degree <= a_s and a strict mask) computes only the
hidden units of degree <= t = max(output degree) - 1 that earlier steps have not computed yet:
a unit of degree k reads units of degree <= k of the layer below, and inputs of degree <= t are
all sampled by then. Each unit's row is evaluated once, against the prefix of the layer below
that its mask keeps, so the total work is one forward pass (plus the D small output products),
whatever D is. Each step of each layer is one row-slice product: on the reference backend an
F.linear with the weights masked once per call, on the Triton backend the masked_linear kernel
(mask from the degree slices, tile skipping as usual).

Persistent kernel: on the Triton backend a feedforward network (the MADE of nflows without
residual blocks; any number of hidden layers, output_multiplier <= 64) samples in ONE launch of
kernels/made/sample.py's persistent kernel, which walks the same schedule (built here on the
host as int32 tables: per step and layer the newly computable unit range and the prefix it reads).
The step loop below (one masked_linear launch per layer per step, a few thousand launches for
D = 784) remains for residual networks, for sampling that autograd records, and when
``persistent=False``; the two agree (tests/made/test_made_models.py).

Networks
--------
feedforward (residual=False): h_1 = act(W_0 x + b_0 + c_0), h_{l+1} = act(W_l h_l + b_l + c_l),
    params = W_{L-1} h_{L-1} + b_{L-1} (strict mask). ``context_terms[l]`` (optional, [B, H_{l+1}])
    is the conditioning term of hidden layer l+1 (e.g. nflows' context_layer(context)).
residual (nflows' MaskedResidualBlock): weights = [W_init, W_a1, W_b1, ..., W_final];
    s = W_init x + b + c_0; each block s <- s + W_b act(W_a act(A s + C) + b_a + c_a) + b_b;
    params = W_final s + b (strict). All hidden layers share one degree vector. (A, C) is the
    block's ``pre_activation`` entry (eval-mode batch norm of the residual stream; identity when
    None); a batch norm after W_a is folded into W_a's rows by the caller.
params of input j are rows j*m ... j*m + m - 1 (m = output_multiplier), nflows' layout.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..ref import made as ref
from . import _made_checks as chk, _registry, made as _ops

# the persistent kernel indexes its flat weights and its scratch block with 32-bit offsets
MAX_KERNEL_OFFSET = 2**31


def _slice_linear(mode: str, x, w, b, in_deg, out_deg, strict: bool, act: str):
    """One step's row slice of one layer: act(x . (w * M)^T + b). In the reference mode ``w`` is
    already masked (once per call, so each step is a plain F.linear); the kernel mode builds M
    from the degree slices. No argument checks: made_sample validated the whole network."""
    if mode == "reference":
        return ref.apply_activation(F.linear(x, w, b), act)
    return _registry.get(f"masked_linear_{mode}")(x, w, b, in_deg, out_deg, None, strict, act)[0]


def _steps(n_weights: int, residual: bool):
    """The network as buffer-to-buffer steps: ("linear", weight index, src, dst, act, residual_src)
    and ("act", src, dst). Buffer 0 is the (sorted) input; the last weight is the output layer."""
    steps = []
    if not residual:
        for l in range(n_weights - 1):
            steps.append(("linear", l, l, l + 1, True, None))
        return steps, n_weights
    if n_weights < 2 or (n_weights - 2) % 2:
        raise ValueError("made_sample: a residual network has weights [initial, (a, b) per block, final]")
    steps.append(("linear", 0, 0, 1, False, None))
    buf = 1
    for blk in range((n_weights - 2) // 2):
        u, t, s = buf + 1, buf + 2, buf + 3
        steps += [("act", buf, u), ("linear", 1 + 2 * blk, u, t, True, None), ("linear", 2 + 2 * blk, t, s, False, buf)]
        buf = s
    return steps, buf + 1


def made_sample(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    degrees: Sequence[torch.Tensor],
    noise: torch.Tensor,
    *,
    kind: str = "bernoulli",
    activation: str | None = "relu",
    context_terms: Sequence[torch.Tensor | None] | None = None,
    residual: bool = False,
    backend: str | None = None,
    return_params: bool = False,
    persistent: bool | None = None,
    pre_activation: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Samples [B, D] from a MADE given per-dimension ``noise`` [B, D] (uniform for
    ``kind="bernoulli"``, standard normal for ``"gaussian"`` (x = mu + exp(alpha) e) and for
    ``"affine"`` (nflows' MAF inverse, x = (z - shift) / scale)); the math of each step is
    pygen.ref.made's ``STEPS[kind]``. ``weights``/``biases``/``degrees`` describe the network (see
    the module docstring); the result equals pygen.ref.made.made_sample with the same noise.
    ``return_params=True`` also returns the network's output [B, D * m] at the samples (each
    group computed at its step, so no extra pass). ``persistent`` (Triton backend): None picks the
    single-launch persistent kernel whenever it applies (feedforward network, output_multiplier
    <= 64, no autograd recording), False forces the per-step loop, True raises where it does not
    apply.

    Host reads: the degree vectors are copied to the host once per call (one synchronisation on
    a GPU, whatever pygen.set_value_checks says): the schedule (which hidden units each step
    computes, and the step loop's slices) is built from them on the host. The autoregressive
    check of the degrees runs on that copy, so it costs nothing more and always runs. made_sample
    therefore cannot be captured in a CUDA graph; everything after the schedule is device work."""
    name = "made_sample"
    bsz, d, mult, act, degs = _check_args(
        name, weights, biases, degrees, noise, kind, activation, context_terms, residual, pre_activation
    )
    net = _sorted_network(name, weights, biases, degs, context_terms, pre_activation, residual, d, mult)
    mode = _ops._pick(name, noise, backend)
    if mode == "reference":  # mask every weight once; each step is then a plain F.linear
        for l in range(len(net.W)):
            dst_deg = net.dev_deg[net.w_deg_dst[l]] if l in net.w_deg_dst else degs[-1]
            mask = ref.autoregressive_mask(net.dev_deg[net.src_of[l]], dst_deg, l == len(net.W) - 1)
            net.W[l] = net.W[l] * mask.to(weights[0].dtype)
    noise_sorted = noise[:, net.dev_perm[0]]
    differentiable = torch.is_grad_enabled() and (
        noise.requires_grad
        or any(
            t is not None and t.requires_grad
            for t in list(net.W) + list(net.B) + list(net.C) + [v for pa in net.pre_act.values() for v in pa]
        )
    )
    why_not = _why_not_persistent(mode, residual, differentiable, mult, net.W, bsz, d)
    if persistent is True and why_not:
        raise ValueError(f"{name}: persistent=True is not available here: {why_not}")
    if persistent is not False and why_not is None:
        xs, params_all = _run_persistent(
            net.W,
            net.B,
            net.C,
            net.dev_deg,
            net.deg_lists,
            degs[-1],
            net.need,
            net.order,
            noise_sorted,
            mult,
            act,
            kind,
            return_params,
        )
    else:
        xs, params_all = _step_loop(
            net, mode, noise, noise_sorted, degs[-1], mult, act, kind, differentiable, return_params
        )
    x = torch.empty_like(xs)
    x[:, net.dev_perm[0]] = xs
    return (x, params_all) if return_params else x


def _check_args(name, weights, biases, degrees, noise, kind, activation, context_terms, residual, pre_activation):
    """Validates every argument in the order the errors were always raised; returns (batch, D,
    output multiplier, activation, degrees on the weights' device). The autoregressive check of the
    degrees runs on their host copy in _sorted_network."""
    chk.tensor(name, noise, "noise")
    if noise.dim() != 2:
        raise ValueError(f"{name}: noise must be [batch, features], got shape {tuple(noise.shape)}")
    if kind not in ref.STEPS:
        raise ValueError(f"{name}: kind must be one of {tuple(ref.STEPS)}, got {kind!r}")
    act = chk.activation(name, activation)
    if not isinstance(weights, (list, tuple)) or not weights:
        raise TypeError(f"{name}: weights must be a non-empty list of [out, in] tensors")
    dtype, device = weights[0].dtype, weights[0].device
    chk.floating(name, weights[0], "weights[0]")
    degs = chk.network(name, weights, biases, degrees, device, dtype)
    if noise.dtype != dtype or noise.device != device:
        raise TypeError(
            f"{name}: noise must be {dtype} on {device} like the weights, got {noise.dtype} on {noise.device}"
        )
    bsz, d = noise.shape
    if weights[0].shape[1] != d:
        raise ValueError(f"{name}: noise has {d} features but weights[0] takes {weights[0].shape[1]} inputs")
    n_out = weights[-1].shape[0]
    if n_out % d or n_out == 0:
        raise ValueError(f"{name}: the output layer has {n_out} units, not a positive multiple of D = {d}")
    mult = n_out // d
    if kind != "bernoulli" and mult < 2:
        raise ValueError(
            f"{name}: kind={kind!r} reads two params per input (output_multiplier >= 2), "
            f"but the output layer has {n_out} units for D = {d}"
        )
    if pre_activation is not None:
        _check_pre_activation(name, pre_activation, weights, residual)
    if context_terms is not None:
        _check_context_terms(name, context_terms, weights, bsz)
    return bsz, d, mult, act, degs


def _check_pre_activation(name, pre_activation, weights, residual):
    dtype, device = weights[0].dtype, weights[0].device
    n_blocks = (len(weights) - 2) // 2 if residual else 0
    if not residual or not isinstance(pre_activation, (list, tuple)) or len(pre_activation) != n_blocks:
        raise ValueError(
            f"{name}: pre_activation must be a list of one (scale, shift) pair or None per "
            f"residual block ({n_blocks} here) and only applies to residual networks"
        )
    for k, pa in enumerate(pre_activation):
        if pa is None:
            continue
        if not isinstance(pa, (list, tuple)) or len(pa) != 2:
            raise ValueError(f"{name}: pre_activation[{k}] must be a (scale, shift) pair, got {type(pa).__name__}")
        for t_, what in zip(pa, ("scale", "shift")):
            chk.tensor(name, t_, f"pre_activation[{k}] {what}")
            if tuple(t_.shape) != (weights[0].shape[0],) or t_.dtype != dtype or t_.device != device:
                raise ValueError(
                    f"{name}: pre_activation[{k}] {what} must be [{weights[0].shape[0]}] {dtype} "
                    f"on {device}, got {list(t_.shape)} {t_.dtype} on {t_.device}"
                )


def _check_context_terms(name, context_terms, weights, bsz):
    dtype, device = weights[0].dtype, weights[0].device
    if not isinstance(context_terms, (list, tuple)) or len(context_terms) != len(weights):
        raise ValueError(f"{name}: context_terms must be a list with one entry (tensor or None) per weight")
    for l, c in enumerate(context_terms):
        if c is None:
            continue
        chk.tensor(name, c, f"context_terms[{l}]")
        if tuple(c.shape) != (bsz, weights[l].shape[0]):
            raise ValueError(
                f"{name}: context_terms[{l}] must be [batch, out_features of weights[{l}]] = "
                f"{[bsz, weights[l].shape[0]]}, got {list(c.shape)}"
            )
        if c.dtype != dtype or c.device != device:
            raise TypeError(f"{name}: context_terms[{l}] must be {dtype} on {device}, got {c.dtype} on {c.device}")


class _Network:
    """The network with its inputs and every hidden buffer sorted by degree (the function is
    unchanged): permuted weights W, biases B, context terms C, pre-activations, and the schedule's
    host-side degree lists."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _sorted_network(name, weights, biases, degs, context_terms, pre_activation, residual, d, mult) -> _Network:
    device = weights[0].device
    steps, n_bufs = _steps(len(weights), residual)
    deg_cpu = [t.cpu() for t in degs]  # one host synchronisation: the schedule's input
    in_deg, out_deg = deg_cpu[0], deg_cpu[-1]
    need = out_deg.view(d, mult)
    bad = (need > in_deg.view(d, 1)).nonzero()
    if bad.numel():
        j, r = bad[0].tolist()
        raise ValueError(
            f"{name}: degrees are not autoregressive: output unit {j * mult + r} (input {j}) has "
            f"degree {int(need[j, r])} > input degree {int(in_deg[j])}, so it would see x_{j}"
        )
    if residual:
        for l in range(2, len(degs) - 1):
            if not torch.equal(deg_cpu[l], deg_cpu[1]):
                raise ValueError(
                    f"{name}: a residual network needs one degree vector for every hidden "
                    f"layer; degrees[{l}] differs from degrees[1]"
                )
    order = torch.sort(in_deg, stable=True).indices
    buf_perm = [order] + [None] * (n_bufs - 1)
    buf_deg = [in_deg[order]] + [None] * (n_bufs - 1)
    w_deg_dst = {}
    for st in steps:
        if st[0] == "linear":
            l, dst = st[1], st[3]
            if buf_perm[dst] is None:
                p = ref.degree_sort_permutation(deg_cpu[l + 1])
                buf_perm[dst], buf_deg[dst] = p, deg_cpu[l + 1][p]
            w_deg_dst[l] = dst
        else:
            buf_perm[st[2]], buf_deg[st[2]] = buf_perm[st[1]], buf_deg[st[1]]
    src_of = {st[1]: st[2] for st in steps if st[0] == "linear"}
    src_of[len(weights) - 1] = n_bufs - 1
    dev_perm = [p.to(device) for p in buf_perm]
    W, B, C = [], [], []
    for l, w in enumerate(weights):
        w, b = w[:, dev_perm[src_of[l]]], biases[l]
        c = None if context_terms is None else context_terms[l]
        if l in w_deg_dst:
            p = dev_perm[w_deg_dst[l]]
            w, b = w[p], (None if b is None else b[p])
            c = None if c is None else c[:, p]
        W.append(w)
        B.append(b)
        C.append(c)
    pre_act = {}
    if pre_activation is not None:
        act_dsts = [st[2] for st in steps if st[0] == "act"]  # one per residual block, in order
        for k, pa in enumerate(pre_activation):
            if pa is not None:
                p = dev_perm[act_dsts[k]]
                pre_act[act_dsts[k]] = (pa[0][p], pa[1][p])
    return _Network(
        steps=steps,
        n_bufs=n_bufs,
        order=order,
        need=need,
        src_of=src_of,
        w_deg_dst=w_deg_dst,
        dev_perm=dev_perm,
        dev_deg=[bd.to(device) for bd in buf_deg],
        deg_lists=[bd.tolist() for bd in buf_deg],
        W=W,
        B=B,
        C=C,
        pre_act=pre_act,
    )


def _why_not_persistent(mode, residual, differentiable, mult, W, bsz, d) -> str | None:
    """Why the single-launch persistent kernel does not apply (None: it does)."""
    if mode == "reference":
        return "the reference backend runs the step loop"
    if residual:
        return "residual networks use the step loop"
    if differentiable:
        return "sampling recorded by autograd uses the step loop"
    if mult > 64:
        return f"output_multiplier {mult} > 64"
    if (
        sum(w.numel() for w in W) >= MAX_KERNEL_OFFSET
        or bsz * (d + sum(w.shape[0] for w in W[:-1])) >= MAX_KERNEL_OFFSET
        or bsz * W[-1].shape[0] >= MAX_KERNEL_OFFSET  # the params rows [B, D * m] (32-bit offsets too)
    ):
        return "the network is too large for the kernel's 32-bit offsets"
    return None


def _step_loop(net, mode, noise, noise_sorted, out_deg_dev, mult, act, kind, differentiable, return_params):
    """D steps, each computing the hidden units that just became computable and one sample
    column: (samples in sorted input order [B, D], the network's output or None)."""
    bsz, d = noise.shape
    n_out = net.W[-1].shape[0]
    bufs = [noise.new_zeros((bsz, d))] + [noise.new_zeros((bsz, len(net.deg_lists[i]))) for i in range(1, net.n_bufs)]
    done = [0] * net.n_bufs
    step_fn = ref.STEPS[kind]
    last = len(net.W) - 1
    params_all = noise.new_empty((bsz, n_out)) if return_params else None
    # The buffers are filled in place. When autograd records the loop, every read is a copy (the
    # graph must not see later writes into a tensor it saved); sampling under no_grad reads views.
    read = (lambda t: t.clone()) if differentiable else (lambda t: t)
    for s in range(d):
        j = int(net.order[s])
        rows = slice(j * mult, (j + 1) * mult)
        t = int(net.need[j].max()) - 1  # strict output mask
        for st in net.steps:
            _advance(net, st, t, bufs, done, read, mode, act)
        src = net.src_of[last]
        p = bisect.bisect_right(net.deg_lists[src], t)
        params = _slice_linear(
            mode,
            read(bufs[src][:, :p]),
            net.W[last][rows, :p],
            None if net.B[last] is None else net.B[last][rows],
            net.dev_deg[src][:p],
            out_deg_dev[rows],
            True,
            "none",
        )
        bufs[0][:, s] = step_fn(params, noise_sorted[:, s])
        if return_params:
            params_all[:, rows] = params
    return bufs[0], params_all


def _advance(net, st, t, bufs, done, read, mode, act) -> None:
    """One schedule step: the units of its destination buffer with degree <= t not computed yet."""
    dst = st[3] if st[0] == "linear" else st[2]
    e = bisect.bisect_right(net.deg_lists[dst], t)
    c0 = done[dst]
    if e <= c0:
        return
    if st[0] == "act":
        v = read(bufs[st[1]][:, c0:e])
        pa = net.pre_act.get(dst)
        if pa is not None:
            v = v * pa[0][c0:e] + pa[1][c0:e]
        bufs[dst][:, c0:e] = ref.apply_activation(v, act)
    else:
        _, l, src, _, use_act, res = st
        p = bisect.bisect_right(net.deg_lists[src], t)
        ctx = net.C[l]
        fused = act if use_act and ctx is None else "none"
        z = _slice_linear(
            mode,
            read(bufs[src][:, :p]),
            net.W[l][c0:e, :p],
            None if net.B[l] is None else net.B[l][c0:e],
            net.dev_deg[src][:p],
            net.dev_deg[dst][c0:e],
            False,
            fused,
        )
        if ctx is not None:
            z = z + ctx[:, c0:e]
            if use_act:
                z = ref.apply_activation(z, act)
        if res is not None:
            z = z + read(bufs[res][:, c0:e])
        bufs[dst][:, c0:e] = z
    done[dst] = e


def _run_persistent(
    W, B, C, dev_deg, deg_lists, out_deg, need, order, noise_sorted, mult: int, act: str, kind: str, return_params: bool
):
    """Pack the sorted network into kernels/made/sample.py's layouts, build the schedule tables
    (the same c0 / e / p the step loop computes) and launch the persistent kernel once. Returns
    (samples in sorted order [B, D], params [B, D * m] or None)."""
    from ..kernels.made import ACT_CODES, sample as kern

    bsz, d = noise_sorted.shape
    device, dtype = noise_sorted.device, noise_sorted.dtype
    n_w = len(W)
    widths = [d] + [W[l].shape[0] for l in range(n_w - 1)]
    offs = [0]
    for w_ in widths[:-1]:
        offs.append(offs[-1] + w_)
    total = offs[-1] + widths[-1]
    scratch = noise_sorted.new_zeros((bsz, total))
    deg = torch.cat([dev_deg[i].to(torch.int32) for i in range(n_w)])
    w_flat = torch.cat([w.contiguous().reshape(-1) for w in W])
    b_flat = torch.cat([b.to(dtype) if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(W, B)])
    w_offs, b_offs = [0], [0]
    for w in W[:-1]:
        w_offs.append(w_offs[-1] + w.numel())
        b_offs.append(b_offs[-1] + w.shape[0])
    meta = torch.tensor([[offs[i], widths[i], w_offs[i], b_offs[i]] for i in range(n_w)], dtype=torch.int32)
    ctx = None
    if any(c is not None for c in C[:-1]):
        ctx = noise_sorted.new_zeros((bsz, total))
        for l, c in enumerate(C[:-1]):
            if c is not None:
                ctx[:, offs[l + 1] : offs[l + 1] + widths[l + 1]] = c
    # schedule: step s samples input order[s]; t_s = its largest (strict) output degree - 1
    t = need[order].max(dim=1).values - 1
    sorted_deg = [torch.tensor(dl, dtype=torch.int64) for dl in deg_lists[:n_w]]
    cols = []
    for l in range(n_w - 1):
        e = torch.cummax(torch.searchsorted(sorted_deg[l + 1], t, right=True), dim=0).values
        c0 = torch.cat([e.new_zeros(1), e[:-1]])
        p = torch.searchsorted(sorted_deg[l], t, right=True)
        cols.append(torch.stack([c0, e, p], dim=1))
    sched = (torch.stack(cols, dim=1) if cols else torch.zeros((d, 0, 3), dtype=torch.int64)).to(torch.int32)
    sched_out = torch.stack([order, torch.searchsorted(sorted_deg[n_w - 1], t, right=True)], dim=1).to(torch.int32)
    params = noise_sorted.new_empty((bsz, d * mult)) if return_params else None
    kern.made_sample_persistent(
        scratch,
        deg,
        w_flat,
        b_flat,
        ctx,
        meta.to(device),
        sched.contiguous().to(device),
        sched_out.to(device),
        out_deg.to(device=device, dtype=torch.int32),
        noise_sorted.contiguous(),
        params,
        n_w,
        mult,
        ACT_CODES[act],
        kind,
    )
    return scratch[:, :d], params
