"""Fused linear-logsumexp losses, reference (pure PyTorch): the LM-head cross-entropy and the
per-token log-probabilities of a policy.

This module is the oracle the kernels are tested against, the ``reference`` backend of
pygen.ops.losses, and the readable statement of the math. It materialises the [N, V] logits (the
kernels never do); every function runs in any float dtype (float64 for tests) on any device and is
differentiable.

Layouts
-------
hidden [N, H] (or [*, H]: leading dims are flattened), weight [V, H] (nn.Linear's layout: the LM
head), bias [V] or None, targets / tokens [N] (or [*]) int64 / int32.

Logits (row i, vocabulary entry j)
----------------------------------
    z_ij = scale * (hidden_i . weight_j + bias_j)          scale = 1 / temperature (1 for the loss)
    u_ij = softcap * tanh(z_ij / softcap)                   (Gemma 2 soft-capping; u = z without)
    lse_i = log sum_j exp(u_ij)
Column exclusion (``exclude_offset``, InfoNCE's self-similarity): column j = i + offset of row i
is left out of every sum below (its logit is -inf; subtracting it afterwards would cancel
catastrophically, since the self-similarity is the largest logit of its row).

Cross-entropy (``linear_cross_entropy``; F.cross_entropy(hidden @ weight.T + bias, targets) semantics)
-------------------------------------------------------------------------------------------------
    loss_i = lse_i - (1 - eps) u_{i,t_i} - (eps / V) sum_j u_ij + z_loss * lse_i^2      (row i valid)
    loss_i = 0                                              (t_i == ignore_index)
eps = label_smoothing (torch's definition: the target distribution is (1 - eps) onehot + eps / V);
z_loss is the PaLM / Liger auxiliary term coefficient * lse^2 on the capped logits. Reductions:
"none" (loss_i, ignored rows 0), "sum", "mean" = sum / number of valid rows (NaN when there are
none, as torch gives). ``return_lse`` also returns lse [N] (every row, ignored ones included) in
float32 (float64 for float64 input), differentiable: d lse_i / d u_ij = softmax_ij.

Policy log-probabilities (``linear_log_probs``)
----------------------------------------------
    log_prob_i = u_{i,tok_i} - lse_i,   entropy_i = lse_i - sum_j softmax_ij u_ij     (scale = 1/T)

Kernels compute four row statistics in one streaming pass (``row_stats``): lse_i, the target
logit u_{i,t_i}, sum_j u_ij and mu_i = sum_j p_ij u_ij (p = softmax(u)); every loss above is an
elementwise function of them. Their backward, given the gradients (g_lse, g_picked, g_sum, g_mu) of
the four statistics, is what the kernels compute tile by tile:
    dL/du_ij = a_i p_ij + c_i [j == t_i] + d_i - e_i p_ij (u_ij - mu_i)
               a = g_lse + g_mu,  c = g_picked,  d = g_sum,  e = -g_mu
    dL/dz_ij = dL/du_ij (1 - (u_ij / softcap)^2),   dL/dhidden = scale dZ W,  dL/dW = scale dZ^T hidden
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the family computes and accumulates in for ``t``'s: float64 for float64, else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """u [N, V] of the module docstring, in float32 (float64 for float64 input)."""
    dt = compute_dtype(hidden)
    z = hidden.to(dt) @ weight.to(dt).T
    if bias is not None:
        z = z + bias.to(dt)
    if scale != 1.0:
        z = z * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z


def valid_rows(targets: torch.Tensor, ignore_index: int, vocab: int) -> torch.Tensor:
    """Rows that contribute to the loss: target not ignore_index and inside [0, vocab) (the ops
    refuse other targets while value checks are on, and the kernels treat them as ignored)."""
    return (targets != ignore_index) & (targets >= 0) & (targets < vocab)


def excluded_columns(n: int, v: int, offset: int, device=None) -> torch.Tensor:
    """The [n, v] mask of the excluded column of each row: j == i + offset (module docstring)."""
    rows = torch.arange(n, device=device)[:, None]
    return torch.arange(v, device=device)[None, :] == rows + offset


def row_stats(u: torch.Tensor, targets: torch.Tensor, exclude_offset: int | None = None):
    """The four per-row statistics of the logits u [N, V] every loss here is built from (the
    kernels compute exactly these, tile by tile): lse, the target logit u[t] (0 when t is outside
    [0, V)), sum_j u_j and mu = sum_j p_j u_j. ``exclude_offset``: column i + offset of row i is
    left out of all four, as if it did not exist (a row with no column left has lse = -inf)."""
    n, vocab = u.shape
    inside = (targets >= 0) & (targets < vocab)
    if exclude_offset is not None:
        gone = excluded_columns(n, vocab, exclude_offset, u.device)
        inside = inside & (targets != torch.arange(n, device=u.device) + exclude_offset)
        p = torch.softmax(u.masked_fill(gone, float("-inf")), dim=1).nan_to_num(0.0)
        u = u.masked_fill(gone, 0.0)
        lse = torch.logsumexp(u.masked_fill(gone, float("-inf")), dim=1)
    else:
        p = torch.softmax(u, dim=1)
        lse = torch.logsumexp(u, dim=1)
    picked = u.gather(1, torch.where(inside, targets, 0)[:, None])[:, 0]
    picked = torch.where(inside, picked, torch.zeros_like(picked))
    return lse, picked, u.sum(dim=1), (p * u).sum(dim=1)


def cross_entropy_rows(lse, picked, sum_u, valid, vocab: int, label_smoothing: float, z_loss: float):
    """loss_i of the module docstring from the row statistics (0 on rows that are not valid)."""
    rows = lse - (1.0 - label_smoothing) * picked
    if label_smoothing:
        rows = rows - (label_smoothing / vocab) * sum_u
    if z_loss:
        rows = rows + z_loss * lse.square()
    return torch.where(valid, rows, torch.zeros_like(rows))


def reduce_rows(rows: torch.Tensor, valid: torch.Tensor, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    """The reduction of per-row losses (0 on ignored rows): "mean" divides by the valid count."""
    if reduction == "none":
        return rows.to(dtype)
    total = rows.sum()
    if reduction == "sum":
        return total.to(dtype)
    return (total / valid.sum()).to(dtype)


def linear_cross_entropy(hidden, weight, targets, bias=None, *, ignore_index=-100, reduction="mean",
                         label_smoothing=0.0, z_loss=0.0, softcap=None, return_lse=False, eager=False,
                         dtype=None):  # fmt: skip
    """Cross-entropy of the LM head (module docstring); the loss has ``dtype`` (default hidden's). ``eager``:
    the composition a user would otherwise write instead (F.linear, the soft-cap, F.cross_entropy,
    torch.logsumexp, all in hidden's dtype), which holds the [N, V] logits and, under autograd,
    their gradient: the tests' same-dtype baseline and the benchmark's."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1).long()
    if eager:
        loss, lse = _eager(h, weight, t, bias, ignore_index, reduction, label_smoothing, z_loss, softcap)
    else:
        u = logits(h, weight, bias, softcap)
        lse, picked, sum_u, _ = row_stats(u, t)
        valid = valid_rows(t, ignore_index, u.shape[1])
        rows = cross_entropy_rows(lse, picked, sum_u, valid, u.shape[1], label_smoothing, z_loss)
        loss = reduce_rows(rows, valid, reduction, dtype or hidden.dtype)
    if reduction == "none":
        loss = loss.reshape(targets.shape)
    if return_lse:
        return loss, lse.reshape(targets.shape)
    return loss


def _eager(h, weight, t, bias, ignore_index, reduction, label_smoothing, z_loss, softcap):
    u = torch.nn.functional.linear(h, weight, bias)
    if softcap is not None:
        u = softcap * torch.tanh(u / softcap)
    loss = torch.nn.functional.cross_entropy(
        u, t, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
    )
    lse = torch.logsumexp(u, dim=1)
    if z_loss:
        valid = t != ignore_index
        zl = torch.where(valid, z_loss * lse.square(), torch.zeros((), dtype=u.dtype))
        loss = loss + (zl if reduction == "none" else zl.sum() / (valid.sum() if reduction == "mean" else 1))
    return loss, lse


def linear_log_probs(hidden, weight, tokens, *, temperature=1.0, return_entropy=False):
    """log softmax(hidden @ weight.T / temperature)[token] per row, float32 (float64 for float64
    input), shaped like ``tokens``; with ``return_entropy`` also the entropy of each row."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = tokens.reshape(-1).long()
    u = logits(h, weight, scale=1.0 / temperature)
    logp = torch.log_softmax(u, dim=1)
    out = logp.gather(1, t[:, None])[:, 0].reshape(tokens.shape)
    if not return_entropy:
        return out
    entropy = -(logp.exp() * logp).sum(dim=1)
    return out, entropy.reshape(tokens.shape)


# ----------------------------------------------------------------------------------------------
# InfoNCE: SimCLR's NT-Xent, MoCo (v1/v2 with a queue, v3 in-batch), CLIP (symmetric).
# Layouts: queries [N, d]; keys [M, d] (None: SimCLR, the keys are the queries); queue [K, d]
# extra negatives (MoCo); positives [N] int64 / int32, an index into keys.
#
#   q = queries / |queries|,  k = keys / |keys|,  c = queue / |queue|       (normalize=True)
#   s_ij = q_i . k_j / T  (j < M),   s_{i, M + l} = q_i . c_l / T           (T: temperature)
#   loss_i = log sum_{j in J_i} exp(s_ij) - s_{i, p_i}
# J_i is every key and queue row (batch_negatives=True) or only p_i and the queue (False: MoCo
# v1/v2, whose other in-batch keys are not negatives). SimCLR (keys None): the batch holds the
# two views [x1; x2], J_i leaves out j = i (the self-similarity) and p_i = (i + N/2) mod N by
# default; otherwise p_i = i by default. symmetric (CLIP): the pair loss (loss_i + loss'_{p_i}) / 2,
# loss' the same with the roles of queries and keys swapped (p a permutation, inverted).
# reduction: "mean" over the N queries, "sum", "none" ([N]: per query, per pair when symmetric).
# With these statistics: hidden = q / T, weight = k, targets = p, exclude_offset = 0 (SimCLR) is
# exactly row_stats' (lse - picked), which is how the kernels compute it.
# ----------------------------------------------------------------------------------------------
def info_nce_positives(n: int, simclr: bool, device=None) -> torch.Tensor:
    """The default positives: the other view (i + n/2) mod n for SimCLR, else the pairing i."""
    i = torch.arange(n, device=device)
    return (i + n // 2) % n if simclr else i


def info_nce_reduce(rows: torch.Tensor, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    if reduction == "none":
        return rows.to(dtype)
    return (rows.sum() if reduction == "sum" else rows.mean()).to(dtype)


def _info_nce_rows(q, k, c, p, temperature, exclude_self: bool, batch_negatives: bool):
    if batch_negatives:
        s, tgt = q @ k.T, p
    else:
        s, tgt = (q * k[p]).sum(dim=1, keepdim=True), torch.zeros_like(p)
    if c is not None:
        s = torch.cat([s, q @ c.T], dim=1)
    s = s / temperature
    if exclude_self:  # after the division: d(-inf / T) / dT would be NaN
        s = s.masked_fill(excluded_columns(q.shape[0], s.shape[1], 0, q.device), float("-inf"))
    return torch.nn.functional.cross_entropy(s, tgt, reduction="none")


def info_nce(queries, keys=None, *, temperature, positives=None, queue=None, symmetric=False, normalize=True,
             batch_negatives=True, reduction="mean", eager=False):  # fmt: skip
    """The InfoNCE loss of the block comment above, in queries' dtype; materialises the [N, M + K]
    similarities. ``eager``: computed in the inputs' dtype (what a user writes: F.normalize, a
    matmul, F.cross_entropy), the tests' same-dtype baseline and the benchmark's; else float32
    (float64 for float64 input). ``temperature``: a float or a 0-dim tensor (CLIP's learned
    logit scale is 1 / temperature), differentiable."""
    dt = queries.dtype if eager else compute_dtype(queries)

    def unit(x):
        x = x.to(dt)
        return torch.nn.functional.normalize(x, dim=-1) if normalize else x

    simclr = keys is None
    q = unit(queries)
    k = q if simclr else unit(keys)
    c = None if queue is None else unit(queue)
    p = info_nce_positives(q.shape[0], simclr, q.device) if positives is None else positives.long()
    rows = _info_nce_rows(q, k, c, p, temperature, simclr, batch_negatives)
    if symmetric:
        back = _info_nce_rows(k, q, None, torch.argsort(p), temperature, False, True)
        rows = (rows + back[p]) / 2
    return info_nce_reduce(rows, reduction, queries.dtype)


# ----------------------------------------------------------------------------------------------
# GRPO (DeepSeekMath's group relative policy optimisation, DeepSeek-R1's RL stage), with the
# formulas and loss types of TRL's GRPOTrainer (docs/losses.md cites the code matched).
# Layouts: log_probs / old_log_probs / ref_log_probs / mask [B, T] (B sequences, T completion
# tokens), advantages [B], rewards [B] (B = groups x group_size, a group's completions adjacent).
#
#   r_bt = exp(logp_bt - old_bt)                     (old = logp.detach() when None: r = 1)
#   l_bt = -min(r_bt A_b, clip(r_bt, 1 - eps_low, 1 + eps_high) A_b)
#          + beta (exp(ref_bt - logp_bt) - (ref_bt - logp_bt) - 1)        (k3 KL; only with ref)
#   rows_b = sum_t m_bt l_bt,  counts_b = sum_t m_bt   (m: the mask as float; m = 0 tokens add
#                                                       nothing, even non-finite ones)
#   grpo    loss = mean_b rows_b / max(counts_b, 1)
#   bnpo    loss = sum_b rows_b / max(sum_b counts_b, 1)
#   dr_grpo loss = sum_b rows_b / (B T_max)           (T_max = max_completion_length, default T)
#   dapo    loss = sum_b rows_b / max(N_items, 1)     (N_items = num_items_in_batch: the unmasked
#                                                      tokens of the global batch, 0 when all are
#                                                      masked; default sum_b counts_b, i.e. bnpo)
# Only log_probs is differentiated (old, ref, advantages and mask are data, as in TRL).
# ----------------------------------------------------------------------------------------------
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def grpo_token_loss(log_probs, old_log_probs, ref_log_probs, advantages, epsilon_low, epsilon_high, beta):
    """l [B, T] of the section comment, written as TRL writes it (autograd differentiates it)."""
    logp = log_probs
    old = logp.detach() if old_log_probs is None else old_log_probs.to(logp.dtype)
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    adv = advantages.to(logp.dtype)[:, None]
    loss = -torch.min(coef_1 * adv, coef_2 * adv)
    if beta != 0.0 and ref_log_probs is not None:
        d = ref_log_probs.to(logp.dtype) - logp
        loss = loss + beta * (torch.exp(d) - d - 1)
    return loss


def grpo_token_terms(log_probs, old_log_probs, ref_log_probs, advantages, epsilon_low, epsilon_high, beta,
                     with_grad=True):  # fmt: skip
    """(l, dl/dlogp) [B, T] with the derivative written out (what the kernels compute): the
    unclipped term is active where r A <= clip(r) A (on a tie torch.min splits the gradient and
    clamp passes its half inside the closed range, so the whole passes), and the KL term adds
    beta (1 - exp(ref - logp)). Every input is read in log_probs' dtype; no autograd. Without
    ``with_grad`` dl/dlogp is None (the forward's work only)."""
    logp = log_probs
    ratio = torch.ones_like(logp) if old_log_probs is None else torch.exp(logp - old_log_probs.to(logp.dtype))
    adv = advantages.to(logp.dtype)[:, None]
    ra = ratio * adv
    ca = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * adv
    loss = -torch.minimum(ra, ca)
    dloss = torch.where(ra <= ca, -ra, torch.zeros_like(ra)) if with_grad else None
    if beta != 0.0 and ref_log_probs is not None:
        d = ref_log_probs.to(logp.dtype) - logp
        ed = torch.exp(d)
        loss += beta * (ed - d - 1)
        if with_grad:
            dloss += beta * (1 - ed)
    return loss, dloss


def grpo_masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """m * values with m = 0 tokens exactly 0 (whatever values holds there)."""
    m = mask.to(values.dtype)
    return torch.where(m != 0, values * m, torch.zeros((), dtype=values.dtype, device=values.device))


def grpo_reduce(rows, counts, loss_type: str, max_completion_length: int, num_items_in_batch=None):
    """The loss from rows_b = sum_t m l and counts_b = sum_t m ([B] each) for ``loss_type``."""
    if loss_type == "grpo":
        return (rows / counts.clamp(min=1.0)).mean()
    if loss_type == "bnpo" or (loss_type == "dapo" and num_items_in_batch is None):
        return rows.sum() / counts.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return rows.sum() / (rows.shape[0] * max_completion_length)
    if loss_type == "dapo":  # clamped as TRL clamps it: a batch with every token masked gives 0, not NaN
        n = num_items_in_batch
        return rows.sum() / (n.clamp(min=1.0) if isinstance(n, torch.Tensor) else max(float(n), 1.0))
    raise ValueError(f"grpo_loss: loss_type must be one of {GRPO_LOSS_TYPES}, got {loss_type!r}")


def grpo_loss(log_probs, old_log_probs, ref_log_probs, advantages, mask, *, epsilon_low=0.2, epsilon_high=0.2,
              beta=0.04, loss_type="grpo", max_completion_length=None, num_items_in_batch=None):  # fmt: skip
    """The GRPO loss of the section comment in log_probs' dtype (computed in float32, float64 for
    float64 input), differentiable in log_probs."""
    dt = compute_dtype(log_probs)
    keep = mask != 0

    def unmasked(t):  # masked tokens read as 0, so that no NaN / inf there reaches the gradient
        return None if t is None else torch.where(keep, t.to(dt), torch.zeros((), dtype=dt, device=t.device))

    old = None if old_log_probs is None else unmasked(old_log_probs.detach())
    ref = None if ref_log_probs is None else unmasked(ref_log_probs.detach())
    token = grpo_token_loss(unmasked(log_probs), old, ref, advantages.detach(), epsilon_low, epsilon_high, beta)
    rows = grpo_masked(token, mask).sum(dim=-1)
    counts = mask.to(dt).sum(dim=-1)
    t_max = log_probs.shape[-1] if max_completion_length is None else max_completion_length
    return grpo_reduce(rows, counts, loss_type, t_max, num_items_in_batch).to(log_probs.dtype)


def _unbiased_std(dev: torch.Tensor, count: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(sum dev^2 / (count - 1)), count > 1) along ``dim`` (all of dev when None), the dim
    kept; dev is 0 where a reward is NaN. TRL's nanstd, whose value is NaN where the second is
    False: this gives 1 there instead (the caller zeroes those advantages), so that no NaN enters
    the forward and no 0 * inf the backward."""
    var = (dev * dev).sum(dim=dim, keepdim=dim is not None) / (count - 1).clamp(min=1)
    defined = count > 1
    return torch.where(defined, var, 1.0).sqrt(), defined


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards=True) -> torch.Tensor:
    """GRPO's group-relative advantages of rewards [B] (B = groups x group_size, each group's
    completions adjacent), as TRL's GRPOTrainer computes them: r - mean of its group, divided by
    (std + 1e-4) when scaling, std unbiased over the group (``scale_rewards`` True / "group") or
    over the whole batch ("batch"); False / "none": not divided. A std over one value is taken as
    0 (TRL's rule for a group or batch of one). NaN rewards (TRL: a completion no reward function
    could score) are left out of the means and stds, and an advantage TRL leaves NaN (its own
    reward NaN, or a std over fewer than two scored rewards) is 0, as TRL's final
    nan_to_num makes it; the gradient of such an advantage is 0 (never NaN)."""
    mode = {True: "group", False: "none"}.get(scale_rewards, scale_rewards)
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, 0.0)
    grouped, ok = r.view(-1, group_size), valid.view(-1, group_size)
    n = ok.sum(dim=1, keepdim=True)
    dev = torch.where(ok, grouped - grouped.sum(dim=1, keepdim=True) / n.clamp(min=1), 0.0)
    keep = valid
    if mode == "group" and group_size > 1:
        std, defined = _unbiased_std(dev, n, 1)
        dev = dev / (std + 1e-4)
        keep = keep & defined.expand_as(ok).reshape(rewards.shape)
    elif mode == "batch" and rewards.numel() > 1:
        nb = valid.sum()
        bdev = torch.where(valid, r - r.sum() / nb.clamp(min=1), 0.0)
        std, defined = _unbiased_std(bdev, nb, None)
        dev = dev / (std + 1e-4)
        keep = keep & defined
    elif mode != "none":  # a std over one value is 0
        dev = dev / 1e-4
    adv = torch.where(keep, dev.reshape(rewards.shape), 0.0)
    return torch.nan_to_num(adv, nan=0.0)  # infinite rewards: TRL's nan_to_num, same result
