"""Fused linear-logsumexp losses: the LM-head cross-entropy and policy log-probabilities computed
from hidden states and the head weight without ever holding the [N, V] logits.

    loss = pygen.ops.linear_cross_entropy(hidden, lm_head.weight, labels)     # F.cross_entropy semantics
    loss, lse = pygen.ops.linear_cross_entropy(h, w, t, z_loss=1e-4, softcap=30.0, return_lse=True)
    logp, entropy = pygen.ops.linear_log_probs(h, w, tokens, temperature=0.7, return_entropy=True)

The math is pygen/ref/losses.py's (the float64 oracle). Every op is built on one registered op,
``pygen::linear_logsumexp_<backend>``: a streaming pass over vocabulary tiles that returns four
float32 statistics per row (lse, the target logit, the sum of the logits and mu = E_p[u]); the
losses are elementwise torch expressions of them, so autograd composes them and the op's backward
(the tiles recomputed, gradients accumulated tile by tile) serves every loss.

Backends: ``triton`` (kernels/losses, on CUDA, or on CPU under TRITON_INTERPRET=1), ``cpu`` (torch
over vocabulary chunks, pygen/ops/_losses_cpu.py: memory O(N * chunk); float64 included) and
``reference`` (pygen.ref.losses, materialises the logits). The automatic choice takes triton on
CUDA tensors and cpu on CPU tensors; float64 runs on cpu or reference.

Gradient filtering (the cut-cross-entropy method): in the backward, a tile whose softmax is below
``filter_eps`` everywhere and that holds no target skips its two gradient products (the logits
are still recomputed). ``filter_eps="auto"`` is finfo(dtype).eps / 32 (cut-cross-entropy's rule),
None turns it off; it is off whenever the gradient is dense (label smoothing, entropy).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .. import _backend
from ..ref import losses as ref
from . import _info_nce, _losses_checks as chk, _registry
from ._common_checks import flag, positive_float
from ._registry import Backward, OpSpec, register

__all__ = ["linear_cross_entropy", "linear_log_probs", "info_nce", "grpo_loss", "linear_grpo_loss", "group_advantages"]

_SUPPORTED = ("triton", "cpu", "reference")


def _kernels():
    from pygen.kernels import losses  # imported lazily: triton may be missing

    return losses


def _cpu():
    from . import _losses_cpu

    return _losses_cpu


def _rows(t: torch.Tensor) -> torch.Tensor:
    """Unit stride along H (the kernels' layout); a view when it already has it."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def finish_partials(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Combine the per-split partials part [5, S, N] (kernels/losses/linear_logsumexp.py) into the
    row statistics (lse, target logit, sum u, mu) of pygen.ref.losses.row_stats. A row with no
    column left (every one excluded) gets lse = -inf and mu = 0, not NaN; a NaN sum stays NaN."""
    m = part[0].amax(dim=0)
    w = torch.exp(part[0] - torch.where(torch.isneginf(m), 0.0, m))
    s = (part[1] * w).sum(dim=0)
    # s == 0, not s > 0: a NaN (a NaN or +inf logit) must stay NaN, as in torch, not read as "no column"
    mu = torch.where(s == 0, 0.0, (part[4] * w).sum(dim=0) / s)
    return torch.where(s == 0, float("-inf"), m + torch.log(s)), part[2].sum(dim=0), part[3].sum(dim=0), mu


# ---- the registered op: (L = launcher module, *schema arguments) ---------------------------------
def _stats_out(hidden, weight, targets, bias, scale, softcap, with_mu, filter_eps, exclude_offset):
    n = hidden.shape[0]
    return tuple(hidden.new_empty((n,), dtype=ref.compute_dtype(hidden)) for _ in range(4))


def _stats_fwd(L, hidden, weight, targets, bias, scale, softcap, with_mu, filter_eps, exclude_offset):
    n, v = hidden.shape[0], weight.shape[0]
    splits = L.fwd_splits(n, v, hidden.dtype, hidden.is_cuda)
    part = hidden.new_zeros((5, splits, n), dtype=ref.compute_dtype(hidden))
    L.linear_ce_fwd(_rows(hidden), _rows(weight), bias, targets, part, scale, softcap, with_mu, exclude_offset)
    return finish_partials(part)  # four fresh contiguous tensors


def _stats_grad_out(hidden, weight, bias, need_hidden, need_weight, need_bias):
    def grad(t, need):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if need else hidden.new_empty((0,))

    return grad(hidden, need_hidden), grad(weight, need_weight), grad(bias, need_bias and bias is not None)


def _stats_bwd(L, hidden, weight, targets, bias, lse, mu, g_lse, g_picked, g_sum, g_mu, scale, softcap, with_mu,
               filter_eps, exclude_offset, need_hidden, need_weight, need_bias):  # fmt: skip
    acc = ref.compute_dtype(hidden)
    need_bias = need_bias and bias is not None
    coef = torch.stack([g_lse + g_mu, g_picked, g_sum, -g_mu, mu]).to(acc)

    outs = _stats_grad_out(hidden, weight, bias, need_hidden, need_weight, need_bias)

    def buffer(out, need):
        # accumulate in place when the gradient's dtype is the accumulation dtype (no second copy)
        if not need:
            return None
        return out.zero_() if out.dtype == acc else out.new_zeros(out.shape, dtype=acc)

    h, gh = _rows(hidden), buffer(outs[0], need_hidden)  # h copied (if at all) once, not per slice
    for v0, v1 in _vocab_slices(weight, acc, need_weight or need_bias):
        gw = buffer(outs[1][v0:v1], need_weight)
        gb = buffer(outs[2][v0:v1], need_bias)
        L.linear_ce_bwd(
            h, _rows(weight[v0:v1]), None if bias is None else bias[v0:v1],
            targets if v0 == 0 else targets - v0, lse, coef, gh, gw, gb, scale, softcap, filter_eps, with_mu,
            None if exclude_offset is None else exclude_offset - v0,
        )  # fmt: skip
        for out, g in ((outs[1], gw), (outs[2], gb)):
            if g is not None and out.dtype != acc:
                out[v0:v1].copy_(g)
        gw = gb = None  # this slice's float32 buffers go before the next slice allocates its own
    if gh is not None and outs[0].dtype != acc:
        outs[0].copy_(gh)
    return outs


# float32 elements of one vocabulary slice's weight-gradient accumulator (256 MiB)
GRAD_SLICE_ELEMENTS = 1 << 26


def _vocab_slices(weight, acc, need) -> list[tuple[int, int]]:
    """Vocabulary slices of the backward. A low-precision weight's gradient is accumulated in
    float32: over the whole vocabulary that buffer would be twice the gradient returned (3.7 GB at
    DeepSeek-V3's 129,280 x 7168 head in bf16), so each slice's buffer is cast into the gradient
    before the next is allocated: extra memory O(GRAD_SLICE_ELEMENTS), the kernels launched once per
    slice (15 at that head). One slice when the weight is in the accumulation dtype."""
    v, h = weight.shape
    if not need or weight.dtype == acc or v * h <= GRAD_SLICE_ELEMENTS:
        return [(0, v)] if v else []
    step = max(256, GRAD_SLICE_ELEMENTS // max(h, 1) // 256 * 256)  # whole 256-column tiles
    return [(v0, min(v, v0 + step)) for v0 in range(0, v, step)]


def _stats_save(i, out):
    lse, _, _, mu = out
    args = (i.scale, i.softcap, i.with_mu, i.filter_eps, i.exclude_offset)
    return (i.hidden, i.weight, i.targets, i.bias, lse, mu), args


def _stats_grads(c, g_lse, g_picked, g_sum, g_mu):
    hidden, weight, targets, bias, lse, mu = c.saved
    need = (c.needs.hidden, c.needs.weight, bias is not None and c.needs.bias)
    zeros = lse.new_zeros(lse.shape)
    grads = [zeros if g is None else g for g in (g_lse, g_picked, g_sum, g_mu)]
    gh, gw, gb = c.bwd(hidden, weight, targets, bias, lse, mu, *grads, *c.args, *need)
    return {"hidden": gh if need[0] else None, "weight": gw if need[1] else None, "bias": gb if need[2] else None}


STATS = OpSpec(
    "linear_logsumexp",
    "(Tensor hidden, Tensor weight, Tensor targets, Tensor? bias, float scale, float? softcap, bool with_mu, "
    "float filter_eps, int? exclude_offset) -> (Tensor, Tensor, Tensor, Tensor)",
    _stats_fwd,
    _stats_out,
    Backward(
        "(Tensor hidden, Tensor weight, Tensor targets, Tensor? bias, Tensor lse, Tensor mu, Tensor grad_lse, "
        "Tensor grad_picked, Tensor grad_sum, Tensor grad_mu, float scale, float? softcap, bool with_mu, "
        "float filter_eps, int? exclude_offset, bool need_hidden, bool need_weight, bool need_bias) "
        "-> (Tensor, Tensor, Tensor)",
        _stats_bwd,
        lambda hidden, weight, targets, bias, *rest: _stats_grad_out(hidden, weight, bias, *rest[-3:]),
        save=_stats_save,
        grads=_stats_grads,
    ),
)

register(STATS, "triton", _kernels)
register(STATS, "cpu", _cpu)


def _stats(backend, hidden, weight, targets, bias, scale, softcap, with_mu, filter_eps, exclude_offset=None):
    """The four row statistics of the flattened problem on a kernel backend (``exclude_offset``:
    column i + offset of row i left out, pygen/ref/losses.py)."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1).contiguous()
    b = bias.contiguous() if bias is not None else None
    op = _registry.get(f"linear_logsumexp_{backend}")
    return op(h, weight, t, b, float(scale), softcap, with_mu, float(filter_eps), exclude_offset)


def _pick(name: str, t: torch.Tensor, backend: str | None) -> str:
    return _backend.choose_for(name, t, backend, _SUPPORTED, float64_backends=("cpu", "reference"), family="losses")


# ----------------------------------------------------------------------------------------------
# public ops
# ----------------------------------------------------------------------------------------------
def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
    filter_eps: float | str | None = "auto",
    dtype: torch.dtype | None = None,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``F.cross_entropy(hidden @ weight.T + bias, targets, ignore_index=, reduction=,
    label_smoothing=)`` without the [N, V] logits, plus ``z_loss * lse^2`` per valid token
    (PaLM / Liger) and Gemma 2 soft-capping ``softcap * tanh(logits / softcap)`` before the softmax.

    hidden [*, H], weight [V, H] (nn.Linear's layout), bias [V] or None, all one float dtype;
    targets [*] int64 / int32 in [0, V) or ``ignore_index``. Returns the loss in hidden's dtype, or
    in ``dtype`` (a floating dtype, as torch.sum's: the rows are reduced in float32 / float64 and
    cast once; transformers' loss upcasts bf16 logits to float32, pygen.patch.patch_transformers_loss
    asks for float32) ("none": shaped like targets, 0 on ignored rows; "mean" over the valid rows, NaN when there are
    none); with ``return_lse`` also lse float32 [*] (float64 for float64 input), differentiable.
    ``filter_eps``: the backward's gradient filter (module docstring). Targets are checked on the
    host (one sync) unless value checks are off (pygen.value_checks)."""
    name = "linear_cross_entropy"
    vocab, _ = chk.head(name, hidden, weight, bias)
    ignore = chk.integer(name, ignore_index, "ignore_index", -(2**63))
    chk.labels(name, targets, "targets", hidden, vocab, ignore)
    reduction = chk.choice(name, reduction, "reduction", ref.REDUCTIONS)
    eps = chk.in_range(name, label_smoothing, "label_smoothing", 0.0, 1.0)
    zl = chk.in_range(name, z_loss, "z_loss", 0.0)
    cap = positive_float(name, softcap, "softcap", none_ok=True)
    flag(name, return_lse, "return_lse")
    feps = chk.filter_eps_value(name, filter_eps, hidden.dtype)
    out_dtype = chk.float_dtype(name, dtype, "dtype") or hidden.dtype
    b = _pick(name, hidden, backend)
    if b == "reference":
        return ref.linear_cross_entropy(
            hidden, weight, targets, bias, ignore_index=ignore, reduction=reduction, label_smoothing=eps,
            z_loss=zl, softcap=cap, return_lse=return_lse, dtype=out_dtype,
        )  # fmt: skip
    # label smoothing makes every logit's gradient at least eps / V: nothing to filter
    lse, picked, sum_u, _ = _stats(b, hidden, weight, targets, bias, 1.0, cap, False, 0.0 if eps else feps)
    t = targets.reshape(-1)
    valid = ref.valid_rows(t, ignore, vocab)
    rows = ref.cross_entropy_rows(lse, picked, sum_u, valid, vocab, eps, zl)
    loss = ref.reduce_rows(rows, valid, reduction, out_dtype)
    if reduction == "none":
        loss = loss.reshape(targets.shape)
    return (loss, lse.reshape(targets.shape)) if return_lse else loss


def linear_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    filter_eps: float | str | None = "auto",
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(token) = log softmax(hidden @ weight.T / temperature)[token] (and with
    ``return_entropy`` the entropy of each row's distribution), without the [N, V] logits: the
    building block of policy-gradient losses (GRPO). hidden [*, H], weight [V, H], tokens [*] in
    [0, V). Returns float32 (float64 for float64 input) tensors shaped like tokens,
    differentiable in hidden and weight."""
    name = "linear_log_probs"
    vocab, _ = chk.head(name, hidden, weight)
    chk.labels(name, tokens, "tokens", hidden, vocab, None)
    temp = positive_float(name, temperature, "temperature")
    flag(name, return_entropy, "return_entropy")
    feps = chk.filter_eps_value(name, filter_eps, hidden.dtype)
    b = _pick(name, hidden, backend)
    if b == "reference":
        return ref.linear_log_probs(hidden, weight, tokens, temperature=temp, return_entropy=return_entropy)
    # the entropy's gradient is dense (every logit moves it): no filtering with it
    lse, picked, _, mu = _stats(
        b, hidden, weight, tokens, None, 1.0 / temp, None, return_entropy, 0.0 if return_entropy else feps
    )
    logp = (picked - lse).reshape(tokens.shape)
    return (logp, (lse - mu).reshape(tokens.shape)) if return_entropy else logp


def info_nce(
    queries: torch.Tensor,
    keys: torch.Tensor | None = None,
    *,
    temperature: float | torch.Tensor,
    positives: torch.Tensor | None = None,
    queue: torch.Tensor | None = None,
    symmetric: bool = False,
    normalize: bool = True,
    batch_negatives: bool = True,
    reduction: str = "mean",
    group: torch.distributed.ProcessGroup | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Contrastive InfoNCE over the similarities q_i . k_j / T (cosine with ``normalize``) without
    the [N, M] matrix: memory O((N + M + K) d). The math is pygen/ref/losses.py's InfoNCE section.

        loss = info_nce(views, temperature=0.5)                        # SimCLR NT-Xent, views = [x1; x2]
        loss = info_nce(q, k, temperature=0.07, queue=queue)           # MoCo v3 style (batch + queue)
        loss = info_nce(q, k, temperature=0.2, queue=queue, batch_negatives=False)    # MoCo v1/v2
        loss = info_nce(img, txt, temperature=1 / logit_scale.exp(), symmetric=True)  # CLIP

    queries [N, d]; keys [M, d] or None (SimCLR: the keys are the queries, the self-similarity is
    excluded, positives default to the other view (i + N/2) mod N); queue [K, d] extra negatives;
    positives [N] int64 / int32 indices into keys (default: query i pairs with key i). ``symmetric``
    (CLIP) averages the query->key and key->query losses (positives a permutation). ``temperature``: a
    float > 0 or a 0-dim tensor (differentiable). Returns the loss in queries' dtype ("none": [N]).

    ``group`` (a torch.distributed process group): every rank passes its own queries and keys (and
    queue, used locally); the loss is that of the concatenated batch over the ranks (in rank order;
    positives index the concatenated keys; default pairing / SimCLR views per rank), computed by a
    ring of key blocks so no rank holds all keys (pygen/ops/_info_nce_ring.py). Every rank gets the
    global loss ("none": its own rows), and backward, which every rank must run (it is collective),
    gives each rank the gradient of that loss with respect to its own inputs."""
    if group is not None:  # checked there: a refusal on one rank must be raised on every rank
        from . import _info_nce_ring

        args = (queries, keys, temperature, positives, queue, symmetric, normalize, batch_negatives, reduction)
        return _info_nce_ring.info_nce(*args, group=group, backend=backend)
    temp = _info_nce.check(queries, keys, temperature, positives, queue, symmetric, normalize, batch_negatives,
                           reduction, False)  # fmt: skip
    b = _pick(_info_nce.NAME, queries, backend)
    if b == "reference":
        return ref.info_nce(queries, keys, temperature=temp, positives=positives, queue=queue, symmetric=symmetric,
                            normalize=normalize, batch_negatives=batch_negatives, reduction=reduction)  # fmt: skip

    def stats(h, w, t, exclude):
        return _stats(b, h, w, t, None, 1.0, None, False, 0.0, exclude)

    simclr = keys is None
    q = _info_nce.unit(queries, normalize)
    k = q if simclr else _info_nce.unit(keys, normalize)
    p = ref.info_nce_positives(q.shape[0], simclr, q.device) if positives is None else positives
    rows = _info_nce.rows(stats, q / temp, k, _info_nce.unit(queue, normalize), p, simclr, batch_negatives)
    if symmetric:
        rows = (rows + _info_nce.rows(stats, k / temp, q, None, torch.argsort(p), False, True)[p]) / 2
    return ref.info_nce_reduce(rows, reduction, queries.dtype)


# ----------------------------------------------------------------------------------------------
# GRPO: one registered op, ``pygen::grpo_loss_<backend>``, returns rows_b = sum_t m l and
# counts_b = sum_t m ([B] each, pygen/ref/losses.py's GRPO section) in one pass over the tokens;
# every loss type is a torch expression of them (pygen.ref.losses.grpo_reduce), and the op's
# backward takes d loss / d rows and recomputes the per-token derivative in one more pass.
# ----------------------------------------------------------------------------------------------
def _grpo_out(log_probs, old_log_probs, ref_log_probs, advantages, mask, epsilon_low, epsilon_high, beta):
    return tuple(log_probs.new_empty((log_probs.shape[0],), dtype=ref.compute_dtype(log_probs)) for _ in range(2))


def _grpo_fwd(L, log_probs, old_log_probs, ref_log_probs, advantages, mask, epsilon_low, epsilon_high, beta):
    b, t = log_probs.shape
    acc = ref.compute_dtype(log_probs)
    part = log_probs.new_zeros((2, L.grpo_t_blocks(t, log_probs.is_cuda), b), dtype=acc)
    adv = advantages.to(acc).contiguous()  # the launchers take it in the compute dtype
    L.grpo_fwd(log_probs, old_log_probs, ref_log_probs, adv, mask, part, epsilon_low, epsilon_high, beta)
    return part[0].sum(dim=0), part[1].sum(dim=0)  # two outputs, two storages


def _grpo_bwd(L, grad_rows, log_probs, old_log_probs, ref_log_probs, advantages, mask, epsilon_low, epsilon_high,
              beta):  # fmt: skip
    grad = _grpo_grad_out(grad_rows, log_probs)
    acc = ref.compute_dtype(log_probs)
    g, adv = grad_rows.to(acc).contiguous(), advantages.to(acc).contiguous()
    L.grpo_bwd(g, log_probs, old_log_probs, ref_log_probs, adv, mask, grad, epsilon_low, epsilon_high, beta)
    return grad


def _grpo_grad_out(grad_rows, log_probs, *rest):
    return torch.empty_like(log_probs, memory_format=torch.contiguous_format)


def _grpo_grads(c, g_rows, _g_counts):
    if g_rows is None or not c.needs.log_probs:
        return {}
    return {"log_probs": c.bwd(g_rows, *c.saved, *c.args)}


GRPO = OpSpec(
    "grpo_loss",
    "(Tensor log_probs, Tensor? old_log_probs, Tensor? ref_log_probs, Tensor advantages, Tensor mask, "
    "float epsilon_low, float epsilon_high, float beta) -> (Tensor, Tensor)",
    _grpo_fwd,
    _grpo_out,
    Backward(
        "(Tensor grad_rows, Tensor log_probs, Tensor? old_log_probs, Tensor? ref_log_probs, Tensor advantages, "
        "Tensor mask, float epsilon_low, float epsilon_high, float beta) -> Tensor",
        _grpo_bwd,
        _grpo_grad_out,
        save=lambda i, out: (tuple(i[:5]), tuple(i[5:])),
        grads=_grpo_grads,
    ),
    non_differentiable=(1,),
)

register(GRPO, "triton", _kernels)
register(GRPO, "cpu", _cpu)


def _grpo_on(backend, log_probs, old, ref_lp, advantages, mask, args):
    """The loss on ``backend`` from arguments validated by chk.grpo (``args``: its return value);
    old / ref / advantages / mask are data (detached, as TRL treats them)."""
    el, eh, beta, loss_type, t_max, items = args
    if backend == "reference":
        return ref.grpo_loss(log_probs, old, ref_lp, advantages, mask, epsilon_low=el, epsilon_high=eh, beta=beta,
                             loss_type=loss_type, max_completion_length=t_max, num_items_in_batch=items)  # fmt: skip

    def data(t):
        return None if t is None else _rows(t.detach())

    op = _registry.get(f"grpo_loss_{backend}")
    ref_lp = ref_lp if beta != 0.0 else None  # TRL adds no KL term at beta = 0 (not even 0 * inf)
    # the op takes advantages to its compute dtype itself
    rows, counts = op(_rows(log_probs), data(old), data(ref_lp), advantages.detach(), data(mask), el, eh, beta)
    return ref.grpo_reduce(rows, counts, loss_type, t_max, items).to(log_probs.dtype)


def grpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor | None,
    ref_log_probs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.04,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """TRL GRPOTrainer's loss (pygen/ref/losses.py's GRPO section states it) over per-token
    log-probs log_probs [B, T] of the policy, old_log_probs [B, T] of the sampling policy (None:
    log_probs.detach(), TRL's num_iterations = 1), ref_log_probs [B, T] of the reference model
    (None only with beta = 0), advantages [B] (``group_advantages``) and the completion mask
    [B, T] (bool, integer or float weights). ``loss_type``: "grpo" (mean over sequences of their
    token means), "bnpo" (mean over the batch's unmasked tokens), "dr_grpo" (sum / (B
    max_completion_length), default T), "dapo" (sum / max(num_items_in_batch, 1): the unmasked
    tokens of the global batch, a number >= 0 or a 0-dim tensor; default this batch's). Returns a scalar in
    log_probs' dtype, differentiable in log_probs only (the rest is data, as in TRL)."""
    name = "grpo_loss"
    chk.tensor(name, log_probs, "log_probs", dim=2, dtypes=chk.FLOAT_DTYPES)
    args = chk.grpo(name, log_probs.shape, log_probs.device, old_log_probs, ref_log_probs, advantages, mask,
                    epsilon_low, epsilon_high, beta, loss_type, max_completion_length, num_items_in_batch)  # fmt: skip
    # elementwise kernels (no dot product): float64 runs on every backend
    b = _backend.choose_for(name, log_probs, backend, _SUPPORTED, float64_backends=_SUPPORTED, family="losses")
    return _grpo_on(b, log_probs, old_log_probs, ref_log_probs, advantages, mask, args)


def linear_grpo_loss(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
                     old_log_probs: torch.Tensor | None, ref_log_probs: torch.Tensor | None, advantages: torch.Tensor,
                     mask: torch.Tensor, *, temperature: float = 1.0, filter_eps: float | str | None = "auto",
                     backend: str | None = None, **grpo_options: Any) -> torch.Tensor:  # fmt: skip
    """``grpo_loss(linear_log_probs(hidden, weight, tokens, temperature=), old_log_probs, ...)``
    straight from the policy's last hidden states hidden [B, T, H] and its head weight [V, H]:
    the completion tokens' log-probs [B, T] come from the streaming log-sum-exp op, so no [B, T, V]
    tensor is held. tokens [B, T] in [0, V) everywhere (masked positions included: give padding a
    valid id); ``grpo_options`` are grpo_loss's keywords (epsilon_low, epsilon_high, beta,
    loss_type, max_completion_length, num_items_in_batch; same defaults). Differentiable in hidden
    and weight."""
    name = "linear_grpo_loss"
    vocab, _ = chk.head(name, hidden, weight)
    chk.tensor(name, hidden, "hidden", dim=3)
    chk.labels(name, tokens, "tokens", hidden, vocab, None)
    temp = positive_float(name, temperature, "temperature")
    feps = chk.filter_eps_value(name, filter_eps, hidden.dtype)
    unknown = sorted(set(grpo_options) - set(_GRPO_OPTIONS))
    if unknown:
        raise TypeError(f"{name}: unexpected keyword arguments {unknown} (grpo_loss's: {tuple(_GRPO_OPTIONS)})")
    options = {**_GRPO_OPTIONS, **grpo_options}.values()
    args = chk.grpo(name, tokens.shape, hidden.device, old_log_probs, ref_log_probs, advantages, mask, *options)
    b = _pick(name, hidden, backend)
    if b == "reference":
        logp = ref.linear_log_probs(hidden, weight, tokens, temperature=temp)
    else:
        lse, picked, _, _ = _stats(b, hidden, weight, tokens, None, 1.0 / temp, None, False, feps)
        logp = (picked - lse).reshape(tokens.shape)
    return _grpo_on(b, logp, old_log_probs, ref_log_probs, advantages, mask, args)


# grpo_loss's keyword options and their defaults, in chk.grpo's order (linear_grpo_loss takes them too)
_GRPO_OPTIONS = {
    k: p.default
    for k, p in inspect.signature(grpo_loss).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and k != "backend"
}


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: bool | str = True) -> torch.Tensor:
    """GRPO's group-relative advantages of rewards [B] (each prompt's ``group_size`` completions
    adjacent): (r - group mean) / (std + 1e-4), std unbiased over the group (``scale_rewards``
    True / "group"), over the batch ("batch"), or no division (False / "none"), as TRL's
    GRPOTrainer computes them: NaN rewards (unscorable completions) are left out of the means and
    stds and get advantage 0, as does a group with fewer than two scored rewards. O(B) torch
    arithmetic on any device (no kernel: nothing to fuse), differentiable; returns rewards' dtype."""
    name = "group_advantages"
    g = chk.rewards(name, rewards, group_size, scale_rewards)
    return ref.group_advantages(rewards, g, scale_rewards)
