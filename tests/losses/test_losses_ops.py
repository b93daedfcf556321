"""Losses family ops: the reference against torch (F.cross_entropy, log_softmax, Categorical
entropy) in float64; every backend (reference, cpu, triton) against the float64 reference on
random inputs with ignored rows, every reduction, label smoothing, z-loss, soft-capping and bias,
losses and lse and gradients; several vocabulary chunks / splits; the gradient filter (active,
and within tolerance either way); float64 gradcheck on the reference and cpu paths (the Triton
kernels have no float64 path: their float32 gradients are compared with float64 autograd of the
reference); opcheck; torch.compile(fullgraph=True)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import ATOL, assert_close_to_ref, backend_params, dtypes_for, opcheck_registered

import pygen
from pygen import ops
from pygen.ops import _losses_cpu, _registry, losses as losses_ops
from pygen.ref import losses as ref

PARAMS = [p for p in backend_params(family="losses") if p.values[1] in ("triton", "cpu", "reference")]
KERNEL_PARAMS = [p for p in PARAMS if p.values[1] != "reference"]

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.2, "reduction": "none"},
    {"z_loss": 1e-3},
    {"softcap": 4.0},
    {"label_smoothing": 0.05, "z_loss": 1e-4, "softcap": 7.5, "reduction": "sum"},
]


def _problem(n, h, v, dtype, device, gen, bias=True, ignore=(1, 4), scale=0.3):
    """hidden, weight, bias (or None), targets; rows ``ignore`` hold ignore_index (-100)."""
    hid = torch.randn(n, h, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    w = (torch.randn(v, h, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
    b = (torch.randn(v, generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device) if bias else None
    t = torch.randint(0, v, (n,), generator=gen).to(device)
    for i in ignore:
        if i < n:
            t[i] = -100
    return hid, w, b, t


def _d64(*ts):
    return [None if t is None else t.detach().double().cpu().requires_grad_() for t in ts]


def _grads(out, inputs, seed):
    """Gradients of a fixed random projection of ``out`` (a tensor or tuple) w.r.t. inputs."""
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(seed)
    total = sum((o.double().cpu() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in outs)
    leaves = [x for x in inputs if x is not None]
    return torch.autograd.grad(total, leaves)


# ---- the reference is torch's cross-entropy ------------------------------------------------------
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_reference_matches_torch(opts, gen):
    h, w, b, t = _problem(13, 9, 23, torch.float64, "cpu", gen)
    got, lse = ref.linear_cross_entropy(h, w, t, b, return_lse=True, **opts)
    u = F.linear(h, w, b)
    if opts.get("softcap"):
        u = opts["softcap"] * torch.tanh(u / opts["softcap"])
    red = opts.get("reduction", "mean")
    want = F.cross_entropy(u, t, reduction=red, label_smoothing=opts.get("label_smoothing", 0.0))
    valid = t != -100
    zl = opts.get("z_loss", 0.0) * torch.logsumexp(u, 1).square() * valid
    want = want + {"none": zl, "sum": zl.sum(), "mean": zl.sum() / valid.sum()}[red]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, torch.logsumexp(u, 1), rtol=1e-12, atol=1e-12)
    eager = ref.linear_cross_entropy(h, w, t, b, eager=True, **opts)
    torch.testing.assert_close(eager, want, rtol=1e-12, atol=1e-12)


def test_reference_log_probs_match_torch(gen):
    h, w, _, t = _problem(11, 8, 19, torch.float64, "cpu", gen, bias=False, ignore=())
    logp, ent = ref.linear_log_probs(h, w, t, temperature=0.7, return_entropy=True)
    u = F.linear(h, w) / 0.7
    torch.testing.assert_close(logp, torch.log_softmax(u, 1).gather(1, t[:, None])[:, 0])
    torch.testing.assert_close(ent, torch.distributions.Categorical(logits=u).entropy())
    lse, picked, _, mu = ref.row_stats(u, t)
    torch.testing.assert_close(picked - lse, logp)
    torch.testing.assert_close(lse - mu, ent)


# ---- every backend against the float64 reference -------------------------------------------------
def _check_ce(backend, device, dtype, n, hd, v, opts, gen, bias=True, seed=0, **kw):
    h, w, b, t = _problem(n, hd, v, dtype, device, gen, bias=bias)
    leaves = [x.requires_grad_() for x in (h, w, b) if x is not None]
    out = ops.linear_cross_entropy(h, w, t, b, return_lse=True, backend=backend, **opts, **kw)
    h64, w64, b64 = _d64(h, w, b)
    ref64 = ref.linear_cross_entropy(h64, w64, t.cpu(), b64, return_lse=True, **opts)
    same_leaves = [x.detach().clone().requires_grad_() for x in leaves]
    same_b = same_leaves[2] if bias else None
    same = ref.linear_cross_entropy(*same_leaves[:2], t, same_b, return_lse=True, eager=True, **opts)
    loss, lse = out
    assert loss.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    what = f"{backend} {dtype} {opts}"
    assert_close_to_ref(loss, ref64[0], same[0], what=f"loss {what}")
    assert_close_to_ref(lse, ref64[1], same[1], atol=ATOL[lse.dtype], what=f"lse {what}")
    got = _grads(out, leaves, seed)
    want = _grads(ref64, [x for x in (h64, w64, b64) if x is not None], seed)
    eager = _grads(same, same_leaves, seed)
    for name, g, r, e in zip(("hidden", "weight", "bias"), got, want, eager):
        assert g.dtype == dtype
        assert_close_to_ref(g, r, e, what=f"grad {name} {what}")


@pytest.mark.parametrize("device,backend", PARAMS)
def test_linear_cross_entropy_options(device, backend, gen):
    for opts in OPTIONS:
        _check_ce(backend, device, torch.float32, 37, 40, 150, opts, gen)
        _check_ce(backend, device, torch.float32, 20, 33, 70, opts, gen, bias=False)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_linear_cross_entropy_dtypes(device, backend, gen):
    for dtype in dtypes_for(backend, device):
        _check_ce(backend, device, dtype, 29, 48, 130, {"label_smoothing": 0.1, "z_loss": 1e-3}, gen)


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_low_precision_weight_gradient_in_vocabulary_slices(device, backend, gen, monkeypatch):
    """A bf16 / fp16 weight's float32 gradient accumulator is allocated one vocabulary slice at a
    time (pygen/ops/losses.py::_vocab_slices): three slices (256, 256, 188 columns) with targets,
    bias, label smoothing, z-loss and softcap in all of them give the reference's gradients."""
    monkeypatch.setattr(losses_ops, "GRAD_SLICE_ELEMENTS", 256 * 24)
    assert len(losses_ops._vocab_slices(torch.empty(700, 24, dtype=torch.bfloat16), torch.float32, True)) == 3
    opts = {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 6.0}
    for dtype in (torch.bfloat16, torch.float16):
        _check_ce(backend, device, dtype, 29, 24, 700, opts, gen)
    _check_ce(backend, device, torch.bfloat16, 29, 24, 700, {}, gen, bias=False, filter_eps=2.0**-12)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_linear_cross_entropy_out_dtype(device, backend, gen):
    """``dtype=``: the rows are reduced in float32 and cast once (as torch.sum(dtype=)), so a bf16
    input's loss is its float32 loss, not that loss rounded to bf16; gradients stay in the input's
    dtype."""
    h, w, b, t = _problem(33, 40, 150, torch.bfloat16, device, gen, bias=True)
    h.requires_grad_()
    for reduction in ("mean", "sum", "none"):
        wide = ops.linear_cross_entropy(h, w, t, b, reduction=reduction, dtype=torch.float32, backend=backend)
        narrow = ops.linear_cross_entropy(h, w, t, b, reduction=reduction, backend=backend)
        assert wide.dtype == torch.float32 and narrow.dtype == torch.bfloat16
        torch.testing.assert_close(wide.to(torch.bfloat16), narrow, rtol=0, atol=0)
        want = ref.linear_cross_entropy(*_d64(h.detach(), w, b)[:2], t.cpu(), _d64(h, w, b)[2], reduction=reduction)
        torch.testing.assert_close(wide.cpu().double(), want, rtol=2e-6, atol=2e-6)
    (g,) = torch.autograd.grad(wide.sum(), h)
    assert g.dtype == torch.bfloat16


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_many_vocabulary_chunks(device, backend, gen, monkeypatch):
    """Several cpu chunks (ragged last one) / several Triton splits and vocabulary tiles."""
    monkeypatch.setattr(_losses_cpu, "CHUNK_ELEMENTS", 23 * 17)
    _check_ce(backend, device, torch.float32, 23, 24, 301, {"label_smoothing": 0.1, "softcap": 3.0}, gen)
    _check_ce(backend, device, torch.float32, 70, 24, 200, {"reduction": "none"}, gen)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_shapes_and_layouts(device, backend, gen):
    """[B, T, H] hidden with [B, T] targets, int32 targets, a transposed (non-unit H stride) weight,
    column-sliced hidden, size-1 vocabulary and rows, and an empty batch."""
    h, w, b, t = _problem(12, 16, 40, torch.float32, device, gen)
    loss = ops.linear_cross_entropy(h.view(3, 4, 16), w, t.view(3, 4), b, reduction="none", backend=backend)
    want = ref.linear_cross_entropy(h.double(), w.double(), t, b.double(), reduction="none")
    assert loss.shape == (3, 4)
    assert_close_to_ref(loss.reshape(-1), want)
    got = ops.linear_cross_entropy(h, w.t().contiguous().t(), t.int(), b, backend=backend)
    assert_close_to_ref(got, ref.linear_cross_entropy(h.double(), w.double(), t, b.double()))
    wide = torch.randn(12, 40, generator=gen).to(device)
    got = ops.linear_cross_entropy(wide[:, 3:19], w, t, b, backend=backend)
    assert_close_to_ref(got, ref.linear_cross_entropy(wide[:, 3:19].double(), w.double(), t, b.double()))
    one = ops.linear_cross_entropy(h[:1], w[:1], torch.zeros(1, dtype=torch.long, device=device), backend=backend)
    assert float(one) == 0.0  # one class: p = 1
    empty = h[:0].clone().requires_grad_()
    assert torch.isnan(ops.linear_cross_entropy(empty, w, t[:0], backend=backend))  # mean of nothing, as torch
    s = ops.linear_cross_entropy(empty, w, t[:0], reduction="sum", backend=backend)
    assert float(s.detach()) == 0.0
    s.backward()
    assert empty.grad.shape == (0, 16)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_all_rows_ignored(device, backend, gen):
    h, w, b, t = _problem(6, 8, 20, torch.float32, device, gen, ignore=range(6))
    h.requires_grad_()
    assert torch.isnan(ops.linear_cross_entropy(h, w, t, b, backend=backend))
    s = ops.linear_cross_entropy(h, w, t, b, reduction="sum", backend=backend)
    s.backward()
    assert float(s.detach()) == 0.0 and not h.grad.abs().any()


@pytest.mark.parametrize("device,backend", PARAMS)
def test_masked_vocabulary_tiles(device, backend, gen):
    """A -inf bias over whole vocabulary tiles (masked or padded vocabulary): the kernel's running
    max is -inf after such a tile, and exp(-inf - -inf) made the Triton split NaN, read as lse -inf
    (the interpreter's 2 splits of 2 tiles of 64: the first split starts with a masked tile)."""
    h, w, b, t = _problem(6, 16, 200, torch.float32, device, gen, ignore=(2,))
    b = b.clone()
    b[:70] = float("-inf")
    b[130:140] = float("-inf")
    t[t >= 0] = 70 + t[t >= 0] % 60
    h.requires_grad_()
    loss, lse = ops.linear_cross_entropy(h, w, t, b, return_lse=True, backend=backend)
    (gh,) = torch.autograd.grad(loss, h)
    hd, wd, bd = _d64(h, w, b)
    want = F.cross_entropy(F.linear(hd, wd, bd), t.cpu())
    (gwant,) = torch.autograd.grad(want, hd)
    assert_close_to_ref(loss, want)
    assert_close_to_ref(lse, torch.logsumexp(F.linear(hd, wd, bd), 1))
    assert_close_to_ref(gh, gwant)


@pytest.mark.parametrize("device,backend", PARAMS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_logit_gives_nan(device, backend, bad, gen):
    """A NaN or +inf logit (off every target) makes every row's loss NaN, as torch's cross_entropy;
    the cpu and Triton paths read the NaN sum as "no column" and returned lse = loss = -inf."""
    h, w, b, t = _problem(4, 8, 40, torch.float32, device, gen, ignore=())
    b = b.clone()
    b[7] = bad
    t[t == 7] = 8
    loss, lse = ops.linear_cross_entropy(h, w, t, b, return_lse=True, backend=backend)
    assert torch.isnan(F.cross_entropy(F.linear(h.double(), w.double(), b.double()), t))
    if backend == "reference" and bad == float("inf"):  # torch.logsumexp's +inf, documented
        assert torch.isposinf(loss) and torch.isposinf(lse).all(), (loss, lse)
    else:
        assert torch.isnan(loss) and torch.isnan(lse).all(), (loss, lse)


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_deterministic_algorithms(device, backend, gen):
    """Under torch.use_deterministic_algorithms(True) the Triton backward (float32 atomics, no
    deterministic implementation) raises as torch's nondeterministic ops do, or warns with
    warn_only=True; it ran silently before. The cpu backend's fixed-order sums are deterministic."""
    h, w, b, t = _problem(6, 8, 40, torch.float32, device, gen, ignore=())
    h.requires_grad_()
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        loss = ops.linear_cross_entropy(h, w, t, b, backend=backend)
        if backend == "triton":
            with pytest.raises(RuntimeError, match="no deterministic implementation"):
                loss.backward()
            torch.use_deterministic_algorithms(True, warn_only=True)
            with pytest.warns(UserWarning, match="no deterministic implementation"):
                ops.linear_cross_entropy(h, w, t, b, backend=backend).backward()
        else:
            g1 = torch.autograd.grad(loss, h)[0]
            g2 = torch.autograd.grad(ops.linear_cross_entropy(h, w, t, b, backend=backend), h)[0]
            assert torch.equal(g1, g2)
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


# ---- the gradient filter -------------------------------------------------------------------------
def _peaked(device, gen):
    """Logits whose columns >= 64 sit ~40 below the rest (softmax < 1e-17 there), with one row's
    target among them: filtered tiles exist, and a tile holding a target must not be skipped."""
    h, w, b, t = _problem(40, 32, 256, torch.float32, device, gen, ignore=(3,))
    b = b.clone()
    b[64:] -= 40.0
    t[t >= 64] = t[t >= 64] % 64
    t[5] = 200
    return h, w, b, t


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_gradient_filter_skips_and_stays_within_tolerance(device, backend, gen, monkeypatch):
    monkeypatch.setattr(_losses_cpu, "CHUNK_ELEMENTS", 40 * 64)  # cpu chunks of the Triton tile width
    h, w, b, t = _peaked(device, gen)
    h64, w64, b64 = _d64(h, w, b)
    want = _grads(ref.linear_cross_entropy(h64, w64, t.cpu(), b64), (h64, w64, b64), 1)
    grads = {}
    for feps in ("auto", None, 1e-6):
        leaves = [x.detach().clone().requires_grad_() for x in (h, w, b)]
        loss = ops.linear_cross_entropy(*leaves[:2], t, leaves[2], filter_eps=feps, backend=backend)
        grads[feps] = _grads(loss, leaves, 1)
        for name, g, r in zip(("hidden", "weight", "bias"), grads[feps], want):
            assert_close_to_ref(g, r, atol=1e-6, what=f"{name} filter_eps={feps}")
    # the filter acted: the skipped tiles' tiny gradients are exactly zero only with it on
    for feps in ("auto", 1e-6):
        assert not torch.equal(grads[feps][1], grads[None][1]), feps
        # columns 64..191 hold no target: skipped; 192..255 hold row 5's target: kept whole
        assert not grads[feps][1][64:192].abs().any() and grads[None][1][64:192].abs().any()
        assert grads[feps][1][200].abs().max() > 1e-3
        assert torch.equal(grads[feps][1][192:] != 0, grads[None][1][192:] != 0)


# ---- gradcheck (float64) -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend, gen, monkeypatch):
    monkeypatch.setattr(_losses_cpu, "CHUNK_ELEMENTS", 5 * 3)  # three chunks
    h, w, b, t = _problem(5, 4, 8, torch.float64, "cpu", gen, ignore=(2,))
    for opts in OPTIONS:

        def f(h_, w_, b_, opts=opts):
            return ops.linear_cross_entropy(h_, w_, t, b_, return_lse=True, backend=backend, **opts)

        assert torch.autograd.gradcheck(f, [x.clone().requires_grad_() for x in (h, w, b)]), opts

    def lp(h_, w_):
        return ops.linear_log_probs(h_, w_, t.clamp(min=0), temperature=0.8, return_entropy=True, backend=backend)

    assert torch.autograd.gradcheck(lp, [x.clone().requires_grad_() for x in (h, w)])


# ---- linear_log_probs ----------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", PARAMS)
def test_linear_log_probs(device, backend, gen, monkeypatch):
    monkeypatch.setattr(_losses_cpu, "CHUNK_ELEMENTS", 31 * 50)
    for dtype in dtypes_for(backend, device):
        h, w, _, t = _problem(31, 40, 170, dtype, device, gen, bias=False, ignore=())
        for temp, ent in ((1.0, False), (0.6, True)):
            leaves = [h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()]
            out = ops.linear_log_probs(*leaves, t, temperature=temp, return_entropy=ent, backend=backend)
            h64, w64 = _d64(h, w)
            r = ref.linear_log_probs(h64, w64, t.cpu(), temperature=temp, return_entropy=ent)
            outs, refs = (out, r) if ent else ((out,), (r,))
            for o, rr in zip(outs, refs):
                assert o.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
                assert_close_to_ref(
                    o, rr, atol=1e-5 * max(1.0, float(rr.detach().abs().max())), what=f"{backend} {dtype}"
                )
            for name, g, rg in zip(("hidden", "weight"), _grads(out, leaves, 3), _grads(r, (h64, w64), 3)):
                tol = ATOL[dtype] * 4 * max(1.0, float(rg.abs().max()))
                assert_close_to_ref(g.to(dtype), rg, atol=tol, what=f"log_probs {name} {backend} {dtype} T={temp}")


# ---- registration and compile --------------------------------------------------------------------
def _opcheck_cases(name, dev):
    g = torch.Generator().manual_seed(5)
    h, w, b, t = _problem(9, 16, 70, torch.float32, dev, g)
    t = t.clamp(min=0)
    if "_backward_" not in name:
        return [
            (h.requires_grad_(), w.requires_grad_(), t, b.requires_grad_(), 1.0, None, False, 1e-9, None),
            (h, w, t, None, 0.5, 3.0, True, 0.0, None),
            (h, w.requires_grad_(), t, None, 0.5, None, True, 0.0, -3),  # column i - 3 of row i excluded
        ]
    n = h.shape[0]
    lse, mu = torch.randn(n, device=dev) + 5, torch.randn(n, device=dev)
    gs = [torch.randn(n, generator=g).to(dev) for _ in range(4)]
    return [
        (h, w, t, b, lse, mu, *gs, 1.0, 2.0, True, 0.0, None, True, True, True),
        (h, w, t, None, lse, mu, *gs, 0.7, None, False, 1e-3, None, True, False, False),
        (h, w, t, None, lse, mu, *gs, 0.7, None, True, 0.0, 2, True, True, False),
    ]


@pytest.mark.parametrize("name", [n for n in _registry.registered() if n.startswith("linear_logsumexp")])
def test_opcheck(name):
    opcheck_registered(name, _opcheck_cases, "losses")


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_torch_compile_fullgraph(device, backend, gen):
    torch._dynamo.reset()
    h, w, b, t = _problem(17, 24, 90, torch.float32, device, gen)
    h.requires_grad_()
    w.requires_grad_()

    def step(h_, w_):
        loss, lse = ops.linear_cross_entropy(h_, w_, t, b, z_loss=1e-3, return_lse=True, backend=backend)
        logp = ops.linear_log_probs(h_, w_, t.clamp(min=0), temperature=0.9, backend=backend)
        return loss + 0.1 * lse.mean() - 0.01 * logp.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got, eager = compiled(h, w), step(h, w)
    torch.testing.assert_close(got, eager)
    for a, c in zip(torch.autograd.grad(got, (h, w)), torch.autograd.grad(step(h, w), (h, w))):
        torch.testing.assert_close(a, c)


def test_cpu_backend_without_the_native_build(monkeypatch, gen):
    """The losses' cpu backend is PyTorch code: when pygen._C failed to build (simulated here) it
    stays the default on CPU instead of falling back to the reference (which materialises the
    logits), while the native families' cpu backend reports the build error."""
    monkeypatch.setitem(pygen._ext._errors, "_C", "ImportError: simulated failed build")
    assert not pygen.backend_status("cpu", "cpu")[0]
    assert pygen.backend_status("cpu", "cpu", "losses") == (True, "PyTorch (chunked; no pygen._C needed)")
    h, w, b, t = _problem(9, 8, 30, torch.float32, "cpu", gen)
    assert losses_ops._pick("linear_cross_entropy", h, None) == "cpu"
    got = ops.linear_cross_entropy(h, w, t, b, backend="cpu")
    want = ref.linear_cross_entropy(*_d64(h, w), t, b.double())
    assert_close_to_ref(got, want)
    with pytest.raises(RuntimeError, match="pygen._C not built"):
        ops.roi_align(torch.randn(1, 2, 4, 4), torch.tensor([[0.0, 0, 0, 2, 2]]), 2, backend="cpu")


def test_default_backend_choice(monkeypatch):
    monkeypatch.delenv("PYGEN_BACKEND", raising=False)
    x = torch.randn(2, 3)
    sup = ("triton", "cpu", "reference")
    assert pygen.backend_status("cpu", "cpu", "losses")[0]  # PyTorch code: no pygen._C needed
    assert pygen._backend.choose("linear_cross_entropy", x.device, x.dtype, None, sup, "losses") == "cpu"
    f64 = ("cpu", "reference")
    assert pygen._backend.choose_for("linear_cross_entropy", x.double(), None, sup, f64, "losses") == "cpu"
    with pytest.raises(TypeError, match="float64"):
        ops.linear_cross_entropy(x.double(), torch.randn(4, 3).double(), torch.zeros(2).long(), backend="triton")
