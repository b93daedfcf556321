"""GRPO in the losses family: the reference against a transcription of TRL's GRPOTrainer (loss of
every loss type, its gradient, group advantages); every backend (reference, cpu, triton) of
grpo_loss against the float64 reference by the Flash-Attention rule with TRL's formula in the
input dtype as the same-dtype baseline (every loss type, dtype and option, several tiles along
both dims, sliced and transposed inputs, masked tokens holding non-finite values, empty and fully
masked batches); linear_grpo_loss against the reference composition; float64 gradcheck on every
backend (the GRPO kernels are elementwise, so Triton has a float64 path); opcheck;
torch.compile(fullgraph=True); bad inputs raise before any launch; the GRPOLoss module."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    ATOL,
    assert_close_to_ref,
    assert_raises_before_launch,
    backend_params,
    losses_launchers,
    opcheck_registered,
)

import pygen
from pygen import ops
from pygen.ops import _losses_cpu, _registry
from pygen.ref import losses as ref

PARAMS = [p for p in backend_params(family="losses") if p.values[1] in ("triton", "cpu", "reference")]
KERNEL_PARAMS = [p for p in PARAMS if p.values[1] != "reference"]
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

pytestmark = pytest.mark.usefixtures("one_thread")


def _trl_loss(logp, old, ref_lp, adv, mask, eps_low=0.2, eps_high=0.2, beta=0.04, loss_type="grpo", t_max=None,
              items=None):  # fmt: skip
    """TRL GRPOTrainer._compute_loss transcribed (huggingface/trl, trl/trainer/grpo_trainer.py; the
    code matched is cited in docs/losses.md), in the inputs' dtype: the test's independent
    statement of the semantics and the same-dtype baseline."""
    old = logp.detach() if old is None else old
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(coef_1 * adv.unsqueeze(1), coef_2 * adv.unsqueeze(1))
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * (torch.exp(ref_lp - logp) - (ref_lp - logp) - 1)
    m = mask.to(logp.dtype)
    if loss_type == "grpo":
        return ((per_token_loss * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo" or (loss_type == "dapo" and items is None):
        return (per_token_loss * m).sum() / m.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per_token_loss * m).sum() / (per_token_loss.size(0) * (t_max or logp.shape[1]))
    return (per_token_loss * m).sum() / (items.clamp(min=1.0) if torch.is_tensor(items) else max(items, 1.0))


def _trl_nanstd(x, dim=None):
    """trl.trainer.utils.nanstd (TRL 1.16.0), transcribed; the count in x's dtype (TRL's int64
    count / (count - 1) is in torch's default dtype, float32: 1.5e-8 off in float64)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True).to(x.dtype)
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(count / 1.0, float("nan")))
    std = torch.sqrt(var * correction)
    return std.squeeze() if dim is None else std.squeeze(dim)


def _trl_advantages(rewards, n, scale):
    """TRL 1.16.0's group advantages (_generate_and_score_completions, sum_then_normalize),
    transcribed: NaN rewards (unscorable completions) left out of the statistics, NaN advantages
    set to 0."""
    mean = torch.nanmean(rewards.view(-1, n), dim=1).repeat_interleave(n, dim=0)
    if scale in ("group", "none"):
        std = _trl_nanstd(rewards.view(-1, n), dim=1).repeat_interleave(n, dim=0) if n > 1 else rewards * 0
    else:
        std = _trl_nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


def _problem(b, t, gen, dtype=torch.float64, device="cpu", mask="bool"):
    """log_probs, old, ref, advantages, mask [B, T]: ratios spread around 1 so that both clip
    bounds bind for either sign of the advantage; row 1 fully masked, row 0 fully unmasked."""
    logp = -2.0 * torch.rand(b, t, generator=gen, dtype=torch.float64)
    old = logp + 0.25 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    ref_lp = logp + 0.3 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    m = torch.rand(b, t, generator=gen) > 0.3
    m[:1] = True
    m[1:2] = False
    if mask == "float":
        m = m * torch.rand(b, t, generator=gen, dtype=torch.float64).add(0.5)
    elif mask == "int":
        m = m.int()
    cast = [x.to(device=device, dtype=dtype) for x in (logp, old, ref_lp, adv)]
    m = m.to(device=device, dtype=dtype if mask == "float" else m.dtype)
    return (*cast, m)


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _d64(*ts):
    return [None if t is None else (t.detach().cpu().double() if t.is_floating_point() else t.cpu()) for t in ts]


# ---- the reference is TRL's formula --------------------------------------------------------------
REF_OPTIONS = [
    {},
    {"epsilon_low": 0.1, "epsilon_high": 0.28},
    {"old": None},
    {"ref": None, "beta": 0.0},
    {"beta": 0.0},
    {"beta": 0.3, "mask": "float"},
    {"mask": "int"},
    {"max_completion_length": 100},
    {"num_items_in_batch": 37.0},
]


def _split(opts):
    """(problem keyword, op keywords with old / ref overrides, TRL keywords)."""
    opts = dict(opts)
    mask = opts.pop("mask", "bool")
    drop = {k: opts.pop(k) for k in ("old", "ref") if k in opts}
    trl = {"eps_low": opts.get("epsilon_low", 0.2), "eps_high": opts.get("epsilon_high", 0.2),
           "beta": opts.get("beta", 0.04), "t_max": opts.get("max_completion_length"),
           "items": opts.get("num_items_in_batch")}  # fmt: skip
    return mask, drop, opts, trl


def _inputs(problem, drop):
    logp, old, ref_lp, adv, mask = problem
    return logp, None if "old" in drop else old, None if "ref" in drop else ref_lp, adv, mask


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("opts", REF_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_reference_matches_trl(loss_type, opts, gen):
    mask_kind, drop, kw, trl = _split(opts)
    logp, old, ref_lp, adv, mask = _inputs(_problem(7, 13, gen, mask=mask_kind), drop)
    a, b = _leaf(logp), _leaf(logp)
    got = ref.grpo_loss(a, old, ref_lp, adv, mask, loss_type=loss_type, **kw)
    want = _trl_loss(b, old, ref_lp, adv, mask, loss_type=loss_type, **trl)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, a)[0], torch.autograd.grad(want, b)[0], rtol=1e-12, atol=1e-12)


def test_reference_token_derivative_is_autograds(gen):
    """grpo_token_terms' written-out derivative (what the kernels compute) is autograd's of the
    TRL-form per-token loss, clipped and unclipped tokens and both advantage signs included."""
    logp, old, ref_lp, adv, _ = _problem(9, 40, gen)
    x = _leaf(logp)
    token = ref.grpo_token_loss(x, old, ref_lp, adv, 0.15, 0.25, 0.07)
    (auto,) = torch.autograd.grad(token.sum(), x)
    loss, dloss = ref.grpo_token_terms(logp, old, ref_lp, adv, 0.15, 0.25, 0.07)
    torch.testing.assert_close(loss, token.detach(), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(dloss, auto, rtol=1e-14, atol=1e-14)
    ratio = torch.exp(logp - old)
    assert ((ratio < 0.85) & (adv[:, None] < 0)).any() and ((ratio > 1.25) & (adv[:, None] > 0)).any()
    assert ((ratio > 1.25) & (adv[:, None] < 0)).any() and ((ratio < 0.85) & (adv[:, None] > 0)).any()


@pytest.mark.parametrize("scale", [True, False, "group", "batch", "none"])
@pytest.mark.parametrize("group_size", [1, 4, 12])
def test_group_advantages_match_trl(scale, group_size, gen):
    r = torch.randn(12, generator=gen, dtype=torch.float64)
    r[4:8] = 0.5  # a group with zero spread: advantages 0, not NaN
    mode = {True: "group", False: "none"}.get(scale, scale)
    for backend_free in (ref.group_advantages(r, group_size, scale), ops.group_advantages(r, group_size, scale)):
        torch.testing.assert_close(backend_free, _trl_advantages(r, group_size, mode), rtol=1e-12, atol=1e-12)
    x = _leaf(torch.randn(12, generator=gen, dtype=torch.float64))  # std is not differentiable at 0
    assert torch.autograd.gradcheck(lambda y: ops.group_advantages(y, group_size, scale), [x])
    one = ops.group_advantages(r[:1], 1, scale)
    assert torch.equal(one, torch.zeros(1, dtype=torch.float64))
    # NaN rewards (TRL: no reward function could score the completion) are left out of the means
    # and stds and get advantage 0; a group left with one scored reward has no std: all 0
    r[[1, 9, 10, 11]] = float("nan")
    got = ops.group_advantages(r, group_size, scale)
    torch.testing.assert_close(got, _trl_advantages(r, group_size, mode), rtol=1e-12, atol=1e-12)
    assert got.isfinite().all() and (got[[1, 9, 10, 11]] == 0).all()
    # the gradient is 0 (not NaN) at the NaN rewards and in the group with one scored reward
    y = _leaf(torch.where(r.isnan(), r, x.detach()))
    assert torch.autograd.gradcheck(lambda y: ops.group_advantages(y, group_size, scale), [y])


# ---- every backend against the float64 reference -------------------------------------------------
def _check(backend, device, dtype, problem, loss_type, kw, trl, what=""):
    logp, old, ref_lp, adv, mask = problem
    x, y = _leaf(logp), _leaf(logp)
    out = ops.grpo_loss(x, old, ref_lp, adv, mask, loss_type=loss_type, backend=backend, **kw)
    x64 = _leaf(_d64(logp)[0])
    ref64 = ref.grpo_loss(x64, *_d64(old, ref_lp, adv, mask), loss_type=loss_type, **kw)
    same = _trl_loss(y, old, ref_lp, adv, mask, loss_type=loss_type, **trl)
    what = f"{backend} {dtype} {loss_type} {what}"
    assert out.dtype == dtype and out.shape == ()
    assert_close_to_ref(out, ref64, same, what=f"loss {what}")
    (g,) = torch.autograd.grad(out, x)
    assert g.dtype == dtype and g.shape == logp.shape
    assert_close_to_ref(g, torch.autograd.grad(ref64, x64)[0], torch.autograd.grad(same, y)[0], what=f"grad {what}")


@pytest.mark.parametrize("device,backend", PARAMS)
def test_grpo_loss_dtypes_and_loss_types(device, backend, gen):
    """9 x 70 tokens: 3 x 3 tiles under the interpreter (4 x 32)."""
    for dtype in DTYPES:
        problem = _problem(9, 70, gen, dtype, device)
        for loss_type in LOSS_TYPES:
            _check(backend, device, dtype, problem, loss_type, {}, _split({})[3])


@pytest.mark.parametrize("device,backend", PARAMS)
def test_grpo_loss_options(device, backend, gen):
    for opts in REF_OPTIONS:
        mask_kind, drop, kw, trl = _split(opts)
        problem = _inputs(_problem(6, 45, gen, torch.float32, device, mask=mask_kind), drop)
        for loss_type in ("grpo", "dr_grpo", "dapo"):
            _check(backend, device, torch.float32, problem, loss_type, kw, trl, what=str(opts))
    # a 0-dim tensor normaliser (TRL passes num_items_in_batch as one) is used as is
    problem = _problem(5, 20, gen, torch.float32, device)
    items = torch.tensor(29.0, device=device)
    _check(backend, device, torch.float32, problem, "dapo", {"num_items_in_batch": items}, {"items": items})
    # every token of the global batch masked: TRL's count is 0 and it divides by max(count, 1), so
    # the loss and its gradient are 0, not NaN (a tensor count is clamped on the device)
    logp, old, ref_lp, adv, mask = problem
    for items in (torch.tensor(0.0, device=device), torch.tensor(0, device=device), 0):
        x = _leaf(logp)
        out = ops.grpo_loss(x, old, ref_lp, adv, torch.zeros_like(mask), loss_type="dapo", num_items_in_batch=items,
                            backend=backend)  # fmt: skip
        (g,) = torch.autograd.grad(out, x)
        assert out.item() == 0.0 and torch.equal(g, torch.zeros_like(g)), (items, out)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_layouts(device, backend, gen):
    """Row-sliced and column-sliced [B, T] views (any row stride) and transposed ones (copied)."""
    logp, old, ref_lp, adv, mask = _problem(8, 90, gen, torch.float32, device)
    views = [
        (logp[:, 5:75], old[:, 5:75], ref_lp[:, 5:75], adv, mask[:, 5:75]),
        (logp[::2], old[::2], ref_lp[::2], adv[::2], mask[::2]),
        (logp.t().contiguous().t(), old.t().contiguous().t(), ref_lp, adv, mask.t().contiguous().t()),
    ]
    for i, v in enumerate(views):
        _check(backend, device, torch.float32, v, "grpo", {}, _split({})[3], what=f"view {i}")


@pytest.mark.parametrize("device,backend", PARAMS)
def test_masked_tokens_contribute_nothing(device, backend, gen):
    """Masked tokens may hold anything (padding): not even NaN / inf there reaches the loss or
    the gradient, which is exactly 0 on them."""
    logp, old, ref_lp, adv, mask = _problem(6, 40, gen, torch.float32, device)
    junk = [t.clone() for t in (logp, old, ref_lp)]
    for t, v in zip(junk, (float("nan"), float("inf"), float("-inf"))):
        t[~mask] = v
    for loss_type in LOSS_TYPES:
        x = _leaf(junk[0])
        got = ops.grpo_loss(x, junk[1], junk[2], adv, mask, loss_type=loss_type, backend=backend)
        want = ref.grpo_loss(*_d64(logp, old, ref_lp, adv, mask), loss_type=loss_type)
        assert_close_to_ref(got, want, what=loss_type)
        (g,) = torch.autograd.grad(got, x)
        assert torch.isfinite(g).all() and not g[~mask].any()


@pytest.mark.parametrize("device,backend", PARAMS)
def test_small_and_empty_batches(device, backend, gen):
    for b, t in ((1, 1), (3, 1), (1, 33), (5, 0), (0, 7)):
        logp, old, ref_lp, adv, mask = _problem(max(b, 2), t, gen, torch.float32, device)
        inputs = [x[:b] for x in (logp, old, ref_lp, adv, mask)]
        for loss_type in LOSS_TYPES:
            x = _leaf(inputs[0])
            got = ops.grpo_loss(x, *inputs[1:], loss_type=loss_type, backend=backend)
            want = ref.grpo_loss(*_d64(*inputs), loss_type=loss_type)
            torch.testing.assert_close(got.double().cpu(), want, atol=ATOL[torch.float32], rtol=1e-5, equal_nan=True)
            (g,) = torch.autograd.grad(got, x)
            assert g.shape == (b, t)
    logp, old, ref_lp, adv, mask = _problem(4, 10, gen, torch.float32, device)
    none = torch.zeros_like(mask)
    for loss_type in LOSS_TYPES:  # nothing unmasked: every loss type gives 0 (TRL's clamp(min=1))
        assert float(ops.grpo_loss(logp, old, ref_lp, adv, none, loss_type=loss_type, backend=backend)) == 0.0


# ---- gradcheck (float64) -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_gradcheck_float64(backend, gen):
    if not pygen.backend_status(backend, "cpu", "losses")[0]:
        pytest.skip(pygen.backend_status(backend, "cpu", "losses")[1])
    # old = None is log_probs.detach() (TRL's num_iterations = 1): the ratio stays 1 under a finite
    # difference while its gradient is -A, so it is checked against an explicit old instead (below).
    # Triton: 5 x 34 tokens, 2 x 2 tiles under the interpreter; fewer cases (its gradient pass is
    # one for every loss type, which differ only in the torch reduction above it)
    opts = [o for o in REF_OPTIONS[:6] if "old" not in o]
    shape, cases = ((5, 34), [("grpo", {}), ("dapo", {"ref": None, "beta": 0.0, "mask": "float"})]) if (
        backend == "triton") else ((4, 9), [(lt, o) for lt in LOSS_TYPES for o in opts])  # fmt: skip
    for loss_type, opts in cases:
        mask_kind, drop, kw, _ = _split(opts)
        logp, old, ref_lp, adv, mask = _inputs(_problem(*shape, gen, mask=mask_kind), drop)

        def f(x, old=old, ref_lp=ref_lp, adv=adv, mask=mask, kw=kw, loss_type=loss_type):
            return ops.grpo_loss(x, old, ref_lp, adv, mask, loss_type=loss_type, backend=backend, **kw)

        # fast mode (a random projection of the Jacobian) keeps the interpreter's run short
        assert torch.autograd.gradcheck(f, [_leaf(logp)], fast_mode=backend == "triton"), (loss_type, opts)
    logp, old, ref_lp, adv, mask = _problem(*shape, gen)
    x, y = _leaf(logp), _leaf(logp)
    none = ops.grpo_loss(x, None, ref_lp, adv, mask, backend=backend)
    explicit = ops.grpo_loss(y, logp, ref_lp, adv, mask, backend=backend)
    torch.testing.assert_close(none, explicit, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(torch.autograd.grad(none, x), torch.autograd.grad(explicit, y), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_linear_grpo_loss_float64(backend, gen, monkeypatch):
    monkeypatch.setattr(_losses_cpu, "CHUNK_ELEMENTS", 6 * 4)  # several vocabulary chunks
    hid, w, tok, _, old, ref_lp, adv, mask = _linear_problem(2, 3, 4, 11, gen, torch.float64, "cpu")

    def f(h, w_):
        return ops.linear_grpo_loss(h, w_, tok, old, ref_lp, adv, mask, temperature=0.7, backend=backend)

    assert torch.autograd.gradcheck(f, [_leaf(hid), _leaf(w)])


# ---- linear_grpo_loss ----------------------------------------------------------------------------
def _linear_problem(b, t, h, v, gen, dtype, device):
    hid = torch.randn(b, t, h, generator=gen, dtype=torch.float64)
    w = torch.randn(v, h, generator=gen, dtype=torch.float64) * 0.5
    tok = torch.randint(0, v, (b, t), generator=gen)
    logp = ref.linear_log_probs(hid, w, tok)
    old = logp + 0.2 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    ref_lp = logp + 0.3 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    mask = torch.rand(b, t, generator=gen) > 0.25
    out = [x.to(device=device, dtype=dtype) for x in (hid, w)] + [tok.to(device)]
    return (*out, logp, *[x.to(device=device, dtype=torch.float32) for x in (old, ref_lp, adv)], mask.to(device))


@pytest.mark.parametrize("device,backend", PARAMS)
def test_linear_grpo_loss(device, backend, gen, monkeypatch):
    monkeypatch.setattr(_losses_cpu, "CHUNK_ELEMENTS", 15 * 40)
    hid, w, tok, _, old, ref_lp, adv, mask = _linear_problem(3, 5, 24, 150, gen, torch.float32, device)
    for loss_type, temp in (("grpo", 1.0), ("dapo", 0.7)):
        leaves = [_leaf(hid), _leaf(w)]
        got = ops.linear_grpo_loss(*leaves, tok, old, ref_lp, adv, mask, temperature=temp, loss_type=loss_type,
                                   epsilon_high=0.28, backend=backend)  # fmt: skip
        l64 = [_leaf(x.double().cpu()) for x in (hid, w)]
        lp64 = ref.linear_log_probs(*l64, tok.cpu(), temperature=temp)
        want = ref.grpo_loss(lp64, *_d64(old, ref_lp, adv, mask), loss_type=loss_type, epsilon_high=0.28)
        assert got.dtype == torch.float32
        assert_close_to_ref(got, want, what=f"{backend} {loss_type}")
        for name, g, r in zip(("hidden", "weight"), torch.autograd.grad(got, leaves), torch.autograd.grad(want, l64)):
            assert_close_to_ref(g, r, atol=1e-5 * max(1.0, float(r.abs().max())), what=f"{name} {loss_type}")
        # the composition it stands for, on the same backend
        logp = ops.linear_log_probs(hid, w, tok, temperature=temp, backend=backend)
        comp = ops.grpo_loss(logp, old, ref_lp, adv, mask, loss_type=loss_type, epsilon_high=0.28, backend=backend)
        torch.testing.assert_close(got.detach(), comp)


# ---- registration and compile --------------------------------------------------------------------
def _opcheck_cases(name, dev):
    g = torch.Generator().manual_seed(7)
    logp, old, ref_lp, adv, mask = _problem(5, 37, g, torch.float32, dev)
    if "_backward_" not in name:
        return [
            (logp.requires_grad_(), old, ref_lp, adv, mask, 0.2, 0.28, 0.04),
            (logp, None, None, adv, mask.float() * 0.5, 0.1, 0.1, 0.0),
        ]
    grow = torch.randn(5, generator=g).to(dev)
    return [
        (grow, logp, old, ref_lp, adv, mask, 0.2, 0.28, 0.04),
        (grow, logp.double(), None, ref_lp.double(), adv.double(), mask.int(), 0.2, 0.2, 0.5),
    ]


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_torch_compile_fullgraph(device, backend, gen):
    torch._dynamo.reset()
    hid, w, tok, _, old, ref_lp, _, mask = _linear_problem(2, 6, 16, 40, gen, torch.float32, device)
    rewards = torch.randn(2, generator=gen).to(device)
    hid.requires_grad_()

    def step(h):
        adv = ops.group_advantages(rewards, 2)
        logp = ops.linear_log_probs(h, w, tok, backend=backend)
        a = ops.grpo_loss(logp, old, ref_lp, adv, mask, loss_type="bnpo", backend=backend)
        b = ops.linear_grpo_loss(h, w, tok, old, None, adv, mask, beta=0.0, loss_type="dr_grpo", backend=backend)
        return a + b

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got, eager = compiled(hid), step(hid)
    torch.testing.assert_close(got, eager)
    torch.testing.assert_close(torch.autograd.grad(got, hid)[0], torch.autograd.grad(step(hid), hid)[0])


GRPO_OPS = [n for n in _registry.registered() if n.startswith("grpo_loss")]


@pytest.mark.parametrize("name", GRPO_OPS)
def test_opcheck(name):
    assert len(GRPO_OPS) == 4  # forward and backward, triton and cpu
    opcheck_registered(name, _opcheck_cases, "losses")


# ---- bad input -----------------------------------------------------------------------------------
_G = torch.Generator().manual_seed(3)
LP, OLD, REF, ADV, MASK = _problem(4, 6, _G, torch.float32)
HID, W = torch.randn(4, 6, 8), torch.randn(11, 8)
TOK = torch.randint(0, 11, (4, 6))
gl, lgl, ga = ops.grpo_loss, ops.linear_grpo_loss, ops.group_advantages

BAD = [
    # (call, error type, text the message must contain)
    (lambda: gl(LP.numpy(), OLD, REF, ADV, MASK), TypeError, "log_probs"),
    (lambda: gl(LP[0], OLD, REF, ADV, MASK), ValueError, "log_probs must be 2-D"),
    (lambda: gl(LP.long(), OLD, REF, ADV, MASK), TypeError, "log_probs"),
    (lambda: gl(LP.to("meta"), OLD, REF, ADV, MASK), ValueError, "log_probs is on the meta device"),
    (lambda: gl(LP, OLD[:, :5], REF, ADV, MASK), ValueError, "old_log_probs must have shape (4, 6)"),
    (lambda: gl(LP, OLD.int(), REF, ADV, MASK), TypeError, "old_log_probs"),
    (lambda: gl(LP, OLD, REF[:3], ADV, MASK), ValueError, "ref_log_probs must have shape"),
    (lambda: gl(LP, OLD, REF.to("meta"), ADV, MASK), ValueError, "ref_log_probs is on the meta device"),
    (lambda: gl(LP, OLD, REF, ADV[:3], MASK), ValueError, "advantages must have shape (4,)"),
    (lambda: gl(LP, OLD, REF, ADV[:, None], MASK), ValueError, "advantages"),
    (lambda: gl(LP, OLD, REF, ADV.long(), MASK), TypeError, "advantages"),
    (lambda: gl(LP, OLD, REF, ADV, MASK[:, :5]), ValueError, "mask must have shape (4, 6)"),
    (lambda: gl(LP, OLD, REF, ADV, MASK.to(torch.complex64)), TypeError, "mask"),
    (lambda: gl(LP, OLD, REF, ADV, MASK.to("meta")), ValueError, "mask is on the meta device"),
    (lambda: gl(LP, OLD, None, ADV, MASK), ValueError, "ref_log_probs is None but beta"),
    (lambda: gl(LP, OLD, REF, ADV, MASK, epsilon_low=-0.1), ValueError, "epsilon_low"),
    (lambda: gl(LP, OLD, REF, ADV, MASK, epsilon_low=1.5), ValueError, "epsilon_low"),
    (lambda: gl(LP, OLD, REF, ADV, MASK, epsilon_high=-0.2), ValueError, "epsilon_high"),
    (lambda: gl(LP, OLD, REF, ADV, MASK, epsilon_high="0.2"), TypeError, "epsilon_high"),
    (lambda: gl(LP, OLD, REF, ADV, MASK, beta=-0.04), ValueError, "beta"),
    (lambda: gl(LP, OLD, REF, ADV, MASK, beta=float("inf")), ValueError, "beta"),
    (lambda: gl(LP, OLD, REF, ADV, MASK, loss_type="ppo"), ValueError, "loss_type"),
    (lambda: gl(LP, OLD, REF, ADV, MASK, max_completion_length=0), ValueError, "max_completion_length"),
    (lambda: gl(LP, OLD, REF, ADV, MASK, max_completion_length=2.5), TypeError, "max_completion_length"),
    (lambda: gl(LP, OLD, REF, ADV, MASK, loss_type="dapo", num_items_in_batch=-1), ValueError, "num_items_in_batch"),
    (lambda: gl(LP, OLD, REF, ADV, MASK, num_items_in_batch=torch.ones(2)), ValueError, "num_items_in_batch"),
    (lambda: gl(LP, OLD, REF, ADV, MASK, backend="tpu"), ValueError, "backend"),
    (lambda: lgl(HID, W, TOK, OLD, REF, ADV, MASK, temperature=0.0), ValueError, "temperature"),
    (lambda: lgl(HID[0], W, TOK[0], OLD, REF, ADV, MASK), ValueError, "hidden must be 3-D"),
    (lambda: lgl(HID, W, TOK % 11 + 11, OLD, REF, ADV, MASK), ValueError, "tokens holds"),
    (lambda: lgl(HID, W, TOK, OLD[:3], REF, ADV, MASK), ValueError, "old_log_probs must have shape (4, 6)"),
    (lambda: lgl(HID, W[:, :5], TOK, OLD, REF, ADV, MASK), ValueError, "weight's H"),
    (lambda: lgl(HID, W, TOK, OLD, REF, ADV, MASK, loss_type="x"), ValueError, "linear_grpo_loss: loss_type"),
    (lambda: lgl(HID, W, TOK, OLD, REF, ADV, MASK, eps=0.1), TypeError, "unexpected keyword arguments ['eps']"),
    (lambda: ga(torch.randn(6), 4), ValueError, "group_size (4) must divide the batch (rewards.shape[0] = 6)"),
    (lambda: ga(torch.randn(6), 0), ValueError, "group_size"),
    (lambda: ga(torch.randn(6), 2.0), TypeError, "group_size"),
    (lambda: ga(torch.randn(2, 3), 3), ValueError, "rewards must be 1-D"),
    (lambda: ga(torch.arange(6), 3), TypeError, "rewards"),
    (lambda: ga(torch.randn(6), 3, scale_rewards="std"), ValueError, "scale_rewards"),
    (lambda: ga(torch.randn(6), 3, scale_rewards=1), ValueError, "scale_rewards"),
]


@pytest.mark.parametrize("call,exc,text", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
@pytest.mark.parametrize("backend", [None, "reference", "cpu", "triton"])
def test_bad_input_raises_before_launch(call, exc, text, backend, monkeypatch):
    names = ("grpo_fwd", "grpo_bwd", "linear_ce_fwd", "linear_ce_bwd")
    assert_raises_before_launch(monkeypatch, losses_launchers(), names, call, exc, text, backend)


# ---- the module ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", PARAMS)
def test_grpo_loss_module(device, backend, gen):
    settings = dict(epsilon_low=0.1, epsilon_high=0.28, beta=0.02, loss_type="dr_grpo", max_completion_length=64)
    m = pygen.nn.GRPOLoss(**settings, temperature=0.8, backend=backend)
    assert m.state_dict() == {} and "loss_type='dr_grpo'" in repr(m)
    logp, old, ref_lp, adv, mask = _problem(4, 20, gen, torch.float32, device)
    got = m(logp, old, ref_lp, adv, mask)
    torch.testing.assert_close(got, ops.grpo_loss(logp, old, ref_lp, adv, mask, backend=backend, **settings))
    hid, w, tok, _, old, ref_lp, adv, mask = _linear_problem(2, 3, 8, 30, gen, torch.float32, device)
    got = m.linear(hid, w, tok, old, ref_lp, adv, mask)
    want = ops.linear_grpo_loss(hid, w, tok, old, ref_lp, adv, mask, temperature=0.8, backend=backend, **settings)
    torch.testing.assert_close(got, want)
    logp, old, ref_lp, adv, mask = _problem(4, 20, gen, torch.float32, device)
    dapo = pygen.nn.GRPOLoss(loss_type="dapo", backend=backend)
    got = dapo(logp, old, ref_lp, adv, mask, num_items_in_batch=100.0)
    want = ops.grpo_loss(logp, old, ref_lp, adv, mask, loss_type="dapo", num_items_in_batch=100.0, backend=backend)
    torch.testing.assert_close(got, want)
