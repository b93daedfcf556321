"""The ``cpu`` backend of the losses family: the launchers of kernels/losses (same names, same
arguments, same partials layout) written with torch over vocabulary chunks, so the [N, V] logits
are never held: each chunk is [N, C] with C = chunk_columns(N, V) (about CHUNK_ELEMENTS values),
and peak extra memory is a few [N, C] temporaries plus the outputs the caller passes in.

Forward: chunk s writes the partials of columns [s C, (s + 1) C) into part [5, S, N]
(kernels/losses/linear_logsumexp.py's layout: max, sum exp, target logit, sum u, sum exp * u).
Backward: each chunk is recomputed and its gradient added (grad_h += dZ W_c, grad_w[c] = dZ^T h,
grad_b[c] = column sums of dZ); with ``filter_eps`` > 0 a chunk whose softmax is below it
everywhere and that holds no target is skipped (the cut-cross-entropy filter; this reads one value
per chunk on the host, which costs nothing on CPU tensors). ``exclude`` (an int or None): entry
(i, i + exclude) is left out of every statistic and gradient (pygen/ref/losses.py).

Arithmetic is float32 (float64 for float64 input): 16-bit inputs are upcast chunk by chunk.
"""

from __future__ import annotations

import torch

from ..ref import losses as R  # the GRPO math, stated once

# values per [N, C] chunk: 512 Ki (2 MiB in float32) keeps a chunk's logits in a core's L2 cache
# (4 MiB here) between its matmul and the elementwise passes that follow it (max, exp, sums; in the
# backward exp, the gradient's terms). At 4 Mi (16 MiB, the first setting) each of those passes
# streamed the chunk from memory and every fresh temporary page-faulted in: at N = 512, H = 256,
# V = 8192 (one thread) the passes took 35 of 100 ms per forward+backward, 12 ms at 2^18 values
# (docs/losses.md); 2^17 .. 2^20 measured alike there, 2^19 .. 2^20 best at N = 2048, H = 1024.
CHUNK_ELEMENTS = 1 << 19
# past this many rows a chunk keeps at least MIN_COLUMNS columns (growing past CHUNK_ELEMENTS): a
# thinner chunk re-reads all of hidden for too little matmul work
WIDE_ROWS, MIN_COLUMNS = 2048, 256


def chunk_columns(n: int, v: int) -> int:
    c = CHUNK_ELEMENTS // max(n, 1)
    return max(1, min(v, max(c, MIN_COLUMNS) if n > WIDE_ROWS else c))


def fwd_splits(n: int, v: int, dtype: torch.dtype, is_cuda: bool) -> int:
    """The number of chunks S of the forward's partials."""
    c = chunk_columns(n, v)
    return -(-v // c)


def _chunk_logits(h, weight, bias, j0, j1, scale, softcap):
    u = h @ weight[j0:j1].to(h.dtype).T
    if bias is not None:
        u += bias[j0:j1].to(h.dtype)
    if scale != 1.0:
        u *= scale
    if softcap is not None:
        u = softcap * torch.tanh(u / softcap)
    return u


def _chunks(n: int, v: int):
    c = chunk_columns(n, v)
    return enumerate((j0, min(v, j0 + c)) for j0 in range(0, v, c))


def _excluded(n: int, j0: int, j1: int, offset: int | None, device):
    """(rows, chunk columns) of the excluded entries j == i + offset inside columns [j0, j1), or None."""
    if offset is None:
        return None
    lo = max(0, j0 - offset)
    rows = torch.arange(lo, max(lo, min(n, j1 - offset)), device=device)
    return rows, rows + (offset - j0)


def _not_excluded(t: torch.Tensor, offset: int | None) -> torch.Tensor | bool:
    """Rows whose target is not their excluded column (an excluded target is never picked)."""
    return True if offset is None else t != torch.arange(t.shape[0], device=t.device) + offset


def linear_ce_fwd(hidden, weight, bias, targets, part, scale, softcap, entropy, exclude=None):
    n, v = hidden.shape[0], weight.shape[0]
    if n == 0:
        return
    h = hidden.to(part.dtype)
    t = targets.long()
    keep = _not_excluded(t, exclude)
    for s, (j0, j1) in _chunks(n, v):
        u = _chunk_logits(h, weight, bias, j0, j1, scale, softcap)
        gone = _excluded(n, j0, j1, exclude, u.device)
        if gone is not None:
            u[gone] = float("-inf")
        m = u.amax(dim=1)
        # a row whose only column here is excluded has m = -inf: exp(u - 0) = 0 there, not NaN
        e = torch.exp(u - torch.where(torch.isneginf(m), 0.0, m)[:, None])
        if gone is not None:
            u[gone] = 0.0  # the sums below skip it
        part[0, s] = m
        part[1, s] = e.sum(dim=1)
        inside = (t >= j0) & (t < j1) & keep
        picked = u.gather(1, torch.where(inside, t - j0, 0)[:, None])[:, 0]
        part[2, s] = torch.where(inside, picked, torch.zeros_like(picked))
        part[3, s] = u.sum(dim=1)
        if entropy:
            part[4, s] = (e * u).sum(dim=1)


def linear_ce_bwd(
    hidden, weight, bias, targets, lse, coef, grad_h, grad_w, grad_b, scale, softcap, filter_eps, entropy, exclude=None
):
    n, v = hidden.shape[0], weight.shape[0]
    if n == 0 or (grad_h is None and grad_w is None and grad_b is None):
        return
    h = hidden.to(coef.dtype)
    t = targets.long()
    rows = torch.arange(n, device=hidden.device)
    a, c, d, e, mu = coef
    has_d = bool(d.any())  # d (the sum-of-u gradient) is 0 unless label smoothing: skip its pass
    in_place = not entropy and softcap is None  # u is not needed once p is formed
    keep = _not_excluded(t, exclude)
    for _, (j0, j1) in _chunks(n, v):
        u = _chunk_logits(h, weight, bias, j0, j1, scale, softcap)
        p = u.sub_(lse[:, None]).exp_() if in_place else torch.exp(u - lse[:, None])
        gone = _excluded(n, j0, j1, exclude, u.device)
        if gone is not None:
            p[gone] = 0.0
        inside = (t >= j0) & (t < j1) & keep
        if filter_eps > 0 and not bool(inside.any()) and float(p.max()) < filter_eps:
            continue  # every gradient term of this chunk is below filter_eps
        du = p.mul_(a[:, None]) if not entropy else p * a[:, None]
        if has_d:
            du += d[:, None]
        if entropy:
            du -= e[:, None] * p * (u - mu[:, None])
        du[rows[inside], t[inside] - j0] += c[inside]
        if softcap is not None:
            du *= 1.0 - (u / softcap).square()
        if gone is not None:
            du[gone] = 0.0  # an excluded logit moves nothing (its sum-of-u term d included)
        if scale != 1.0:
            du *= scale
        if grad_h is not None:
            grad_h.addmm_(du, weight[j0:j1].to(du.dtype))
        if grad_w is not None:
            torch.mm(du.T, h, out=grad_w[j0:j1])
        if grad_b is not None:
            torch.sum(du, dim=0, out=grad_b[j0:j1])


# ---- GRPO loss: kernels/losses/__init__.py's grpo launchers in torch (one T block) -------------
def grpo_t_blocks(t: int, is_cuda: bool) -> int:
    return 1


def grpo_fwd(log_probs, old, ref, adv, mask, part, eps_low, eps_high, beta):
    loss, _ = R.grpo_token_terms(log_probs.to(part.dtype), old, ref, adv, eps_low, eps_high, beta, with_grad=False)
    part[0, 0] = R.grpo_masked(loss, mask).sum(dim=-1)
    part[1, 0] = mask.to(part.dtype).sum(dim=-1)


def grpo_bwd(g, log_probs, old, ref, adv, mask, grad, eps_low, eps_high, beta):
    _, dloss = R.grpo_token_terms(log_probs.to(g.dtype), old, ref, adv, eps_low, eps_high, beta)
    grad.copy_(R.grpo_masked(dloss, mask) * g[:, None])
