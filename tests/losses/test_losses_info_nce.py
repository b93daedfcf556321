"""info_nce (SimCLR NT-Xent, MoCo, CLIP) and the column exclusion of the streaming op it runs on.

The float64 reference against each method's published formula written out with the full
similarity matrix; every backend (reference, cpu, triton) against the float64 reference in every
mode (losses and gradients of queries, keys, queue and a tensor temperature) and dtype, with several
cpu chunks / Triton splits; the op's ``exclude_offset`` on the cpu and Triton paths against
pygen.ref.losses.row_stats (offsets inside, partly outside and outside the matrix; a row whose
only column is excluded); float64 gradcheck on the reference and cpu paths; torch.compile
(fullgraph); pygen.nn.InfoNCELoss; bad inputs. The distributed ring: test_losses_info_nce_ring.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import ATOL, assert_close_to_ref, backend_params, dtypes_for

import pygen
from pygen import ops
from pygen.ops import _losses_cpu, losses as losses_ops
from pygen.ops.losses import _stats
from pygen.ref import losses as ref

PARAMS = [p for p in backend_params(family="losses") if p.values[1] in ("triton", "cpu", "reference")]
KERNEL_PARAMS = [p for p in PARAMS if p.values[1] != "reference"]
pytestmark = pytest.mark.usefixtures("one_thread")

# mode -> (keys?, queue?, keyword arguments)
MODES = {
    "simclr": (False, False, {}),
    "clip": (True, False, {"symmetric": True}),
    "moco_v3": (True, True, {}),
    "moco_v2": (True, True, {"batch_negatives": False, "reduction": "sum"}),
    "positives": (True, False, {"positives": "perm", "reduction": "none", "normalize": False}),
}


def _inputs(mode, n, d, dtype, device, gen, k_queue=9):
    has_keys, has_queue, opts = MODES[mode]
    opts = dict(opts)
    q = torch.randn(n, d, generator=gen, dtype=torch.float64)
    k = (torch.randn(n, d, generator=gen, dtype=torch.float64) + q) if has_keys else None
    c = torch.randn(k_queue, d, generator=gen, dtype=torch.float64) if has_queue else None
    if opts.get("positives") == "perm":
        opts["positives"] = torch.randperm(n, generator=gen).to(device)
    if not opts.get("normalize", True):  # raw dot products: keep the logits O(1)
        q, k = q * 0.4, k * 0.4
    return [None if t is None else t.to(dtype=dtype, device=device) for t in (q, k, c)], opts


def _leaves(ts, dtype=None):
    return [None if t is None else t.detach().to("cpu" if dtype else t.device, dtype or t.dtype).requires_grad_()
            for t in ts]  # fmt: skip


def _grads(out, leaves, seed):
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(out.shape, generator=g, dtype=torch.float64)
    live = [x for x in leaves if x is not None]
    return torch.autograd.grad((out.double().cpu() * proj).sum(), live)


# ---- the reference is the published formulas ------------------------------------------------------
def test_reference_matches_published_formulas(gen):
    n, d, t = 8, 5, 0.3
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, d, generator=gen, dtype=torch.float64)
    queue = torch.randn(6, d, generator=gen, dtype=torch.float64)
    z = F.normalize(x, dim=1)
    # SimCLR's NT-Xent: 2N views [x1; x2], self-similarity out, positive = the other view
    sim = (z @ z.T / t).masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    labels = (torch.arange(n) + n // 2) % n
    torch.testing.assert_close(ref.info_nce(x, temperature=t), F.cross_entropy(sim, labels))
    # CLIP: logits_per_image and its transpose, diagonal labels, the average of both
    logits = F.normalize(x, dim=1) @ F.normalize(y, dim=1).T / t
    want = (F.cross_entropy(logits, torch.arange(n)) + F.cross_entropy(logits.T, torch.arange(n))) / 2
    torch.testing.assert_close(ref.info_nce(x, y, temperature=t, symmetric=True), want)
    # MoCo v1/v2: l_pos = q . k (own key only), l_neg = q . queue, label 0
    qn, kn, cn = F.normalize(x, dim=1), F.normalize(y, dim=1), F.normalize(queue, dim=1)
    moco = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ cn.T], 1) / t
    got = ref.info_nce(x, y, temperature=t, queue=queue, batch_negatives=False)
    torch.testing.assert_close(got, F.cross_entropy(moco, torch.zeros(n, dtype=torch.long)))
    # in-batch keys plus the queue (MoCo v3 with a queue), a permuted pairing
    p = torch.randperm(n, generator=gen)
    full = torch.cat([qn @ kn.T, qn @ cn.T], 1) / t
    got = ref.info_nce(x, y, temperature=t, queue=queue, positives=p, reduction="none")
    torch.testing.assert_close(got, F.cross_entropy(full, p, reduction="none"))
    # CLIP with the keys shuffled and positives saying where: pair i = (x_i, y_i) again
    pair = (F.cross_entropy(logits, torch.arange(n), reduction="none")
            + F.cross_entropy(logits.T, torch.arange(n), reduction="none")) / 2  # fmt: skip
    y_perm = torch.empty_like(y)
    y_perm[p] = y
    got = ref.info_nce(x, y_perm, temperature=t, symmetric=True, positives=p, reduction="none")
    torch.testing.assert_close(got, pair)


# ---- the op's column exclusion --------------------------------------------------------------------
def _check_exclude(backend, device, dtype, h, w, t, offset, atol):
    """The op's row statistics and their gradients with column i + offset of row i left out,
    against the float64 reference (h, w float64; the op gets them in ``dtype``)."""
    n = h.shape[0]
    h, w = h.to(dtype).double(), w.to(dtype).double()  # the reference sees the rounded inputs
    hl, wl = _leaves((h.to(dtype=dtype, device=device), w.to(dtype=dtype, device=device)))
    got = _stats(backend, hl, wl, t.to(device), None, 0.7, None, True, 0.0, offset)
    h64, w64 = _leaves((h, w))
    want = ref.row_stats(ref.logits(h64, w64, scale=0.7), t, exclude_offset=offset)
    what = f"{backend} {dtype} offset={offset} V={w.shape[0]}"
    fin = torch.isfinite(want[0])  # a row with no column left: lse = -inf (and no gradient)
    assert torch.equal(torch.isfinite(got[0]).cpu(), fin) and not torch.isnan(got[0]).any(), what
    assert (fin | (torch.arange(n) + offset == 0)).all(), what  # only where the one column is gone
    for name, a, b in zip(("lse", "picked", "sum", "mu"), got, want):
        assert_close_to_ref(torch.where(fin.to(device), a, 0.0), torch.where(fin, b, 0.0), atol=atol,
                            what=f"{name} {what}")  # fmt: skip

    def mix(s, keep):
        return torch.where(keep, s[0] - s[1] + 0.1 * s[2] + 0.3 * s[3], 0.0)

    pairs = zip(_grads(mix(got, fin.to(device)), (hl, wl), 1), _grads(mix(want, fin), (h64, w64), 1))
    for name, (a, b) in zip(("hidden", "weight"), pairs):
        assert_close_to_ref(a, b, atol=atol, what=f"grad {name} {what}")


def _exclude_problem(n, d, v, offset, gen):
    h = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(v, d, generator=gen, dtype=torch.float64) * 0.5
    t = torch.randint(0, v, (n,), generator=gen)
    t[:3] = torch.arange(3) + offset  # targets on the excluded column are not picked
    return h, w, t


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_exclude_offset_matches_row_stats(device, backend, gen, monkeypatch):
    monkeypatch.setattr(_losses_cpu, "CHUNK_ELEMENTS", 21 * 40)  # several cpu chunks, ragged last
    for offset, nv in ((0, 130), (-5, 130), (120, 130), (-30, 130), (200, 130), (0, 1), (3, 1)):
        h, w, t = _exclude_problem(21, 16, nv, offset, gen)
        _check_exclude(backend, device, torch.float32, h, w, t, offset, atol=1e-5)


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_exclude_offset_across_vocabulary_slices(device, backend, gen, monkeypatch):
    """A bf16 weight's gradient is accumulated one vocabulary slice at a time
    (pygen/ops/losses.py::_vocab_slices; 256, 256 and 188 columns here): the excluded column and the
    targets are shifted into each slice's own columns."""
    monkeypatch.setattr(losses_ops, "GRAD_SLICE_ELEMENTS", 256 * 16)
    assert len(losses_ops._vocab_slices(torch.empty(700, 16, dtype=torch.bfloat16), torch.float32, True)) == 3
    for offset in (0, 300, -250, 520):
        h, w, t = _exclude_problem(300, 16, 700, offset, gen)
        _check_exclude(backend, device, torch.bfloat16, h, w, t, offset, atol=ATOL[torch.bfloat16])


# ---- every backend against the float64 reference ------------------------------------------------
def _check(mode, backend, device, dtype, n, d, gen, learned_temp=False):
    (q, k, c), opts = _inputs(mode, n, d, dtype, device, gen)
    temp = torch.tensor(0.25, device=device, dtype=dtype) if learned_temp else 0.25
    leaves = _leaves((q, k, c, temp if learned_temp else None))
    got = ops.info_nce(*leaves[:2], temperature=leaves[3] if learned_temp else temp, queue=leaves[2],
                       backend=backend, **opts)  # fmt: skip
    l64 = _leaves((q, k, c, temp if learned_temp else None), torch.float64)
    o64 = {n_: (v.cpu() if torch.is_tensor(v) else v) for n_, v in opts.items()}
    want = ref.info_nce(*l64[:2], temperature=l64[3] if learned_temp else temp, queue=l64[2], **o64)
    same_l = _leaves((q, k, c, temp if learned_temp else None))
    same = ref.info_nce(*same_l[:2], temperature=same_l[3] if learned_temp else temp, queue=same_l[2], eager=True,
                        **opts)  # fmt: skip
    what = f"{mode} {backend} {dtype}"
    assert got.dtype == dtype
    assert_close_to_ref(got, want, same, what=f"loss {what}")
    names = [nm for nm, x in zip(("queries", "keys", "queue", "temperature"), leaves) if x is not None]
    for name, a, b, e in zip(names, _grads(got, leaves, 2), _grads(want, l64, 2), _grads(same, same_l, 2)):
        assert a.dtype == dtype
        assert_close_to_ref(a, b, e, atol=ATOL[dtype] * 4, what=f"grad {name} {what}")


@pytest.mark.parametrize("device,backend", PARAMS)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_modes_float32(device, backend, mode, gen):
    _check(mode, backend, device, torch.float32, 26, 20, gen)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_dtypes_and_learned_temperature(device, backend, gen):
    for dtype in dtypes_for(backend, device):
        _check("clip", backend, device, dtype, 18, 24, gen, learned_temp=True)
        _check("simclr", backend, device, dtype, 18, 24, gen)


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_many_tiles(device, backend, gen, monkeypatch):
    """Several cpu chunks and Triton splits / row and column tiles (the diagonal crosses tiles)."""
    monkeypatch.setattr(_losses_cpu, "CHUNK_ELEMENTS", 70 * 23)
    _check("simclr", backend, device, torch.float32, 70, 12, gen)
    _check("moco_v3", backend, device, torch.float32, 70, 12, gen)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_small_and_empty(device, backend, gen):
    q = torch.randn(2, 4, generator=gen).to(device)
    got = ops.info_nce(q, temperature=0.5, backend=backend)  # one pair: the other view is all there is
    assert float(got) == pytest.approx(0.0, abs=1e-6)
    empty = torch.zeros(0, 4, device=device, requires_grad=True)
    assert torch.isnan(ops.info_nce(empty, empty, temperature=0.5, backend=backend))  # mean of nothing
    s = ops.info_nce(empty, empty, temperature=0.5, reduction="sum", backend=backend)
    s.backward()
    assert float(s.detach()) == 0.0 and empty.grad.shape == (0, 4)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_empty_queue_adds_no_negative(device, backend, gen):
    """A queue of 0 rows equals no queue (torch: concatenating an empty block of logits); the cpu
    and triton backends used to fail streaming it (amax of 0 splits, a division by 0 tiles)."""
    q = torch.randn(5, 8, generator=gen).to(device)
    k = torch.randn(5, 8, generator=gen).to(device) + q
    empty = torch.zeros(0, 8, device=device)
    want = ops.info_nce(q, k, temperature=0.2, backend=backend)
    assert_close_to_ref(ops.info_nce(q, k, temperature=0.2, queue=empty, backend=backend), want)
    alone = ops.info_nce(q, k, temperature=0.2, queue=empty, batch_negatives=False, backend=backend)
    assert float(alone) == pytest.approx(0.0, abs=1e-6)  # the positive is the only logit


# ---- gradcheck, compile, module -------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend, gen, monkeypatch):
    monkeypatch.setattr(_losses_cpu, "CHUNK_ELEMENTS", 6 * 2)  # three chunks
    for mode in MODES:
        (q, k, c), opts = _inputs(mode, 6, 4, torch.float64, "cpu", gen, k_queue=3)
        leaves = [x for x in (q, k, c, torch.tensor(0.4, dtype=torch.float64)) if x is not None]
        has = [x is not None for x in (q, k, c)]

        def f(*xs, has=has, opts=opts):
            it = iter(xs)
            q_, k_, c_ = (next(it) if h else None for h in has)
            return ops.info_nce(q_, k_, temperature=next(it), queue=c_, backend=backend, **opts)

        assert torch.autograd.gradcheck(f, [x.clone().requires_grad_() for x in leaves]), mode


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_torch_compile_fullgraph(device, backend, gen):
    torch._dynamo.reset()
    (q, k, c), _ = _inputs("moco_v3", 12, 16, torch.float32, device, gen)
    q.requires_grad_()
    k.requires_grad_()

    def step(q_, k_):
        return ops.info_nce(q_, k_, temperature=0.2, symmetric=True, backend=backend) + ops.info_nce(
            q_, temperature=0.3, backend=backend
        ) + ops.info_nce(q_, k_, temperature=0.1, queue=c, backend=backend)  # fmt: skip

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got, eager = compiled(q, k), step(q, k)
    torch.testing.assert_close(got, eager)
    for a, b in zip(torch.autograd.grad(got, (q, k)), torch.autograd.grad(step(q, k), (q, k))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_module(device, backend, gen):
    (q, k, _), _ = _inputs("clip", 10, 8, torch.float32, device, gen)
    scale = torch.tensor(2.0, device=device, requires_grad=True)  # CLIP's learned logit scale (log)
    loss_fn = pygen.nn.InfoNCELoss(symmetric=True, backend=backend)
    assert loss_fn.state_dict() == {} and "symmetric=True" in repr(loss_fn)
    got = loss_fn(q, k, temperature=1 / scale.exp())
    want = ref.info_nce(q, k, temperature=1 / scale.exp(), symmetric=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    (g1,) = torch.autograd.grad(got, scale)
    (g2,) = torch.autograd.grad(want, scale)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)
    simclr = pygen.nn.InfoNCELoss(temperature=0.5, backend=backend)
    torch.testing.assert_close(simclr(q), ref.info_nce(q, temperature=0.5), rtol=1e-5, atol=1e-5)


# ---- bad inputs ----------------------------------------------------------------------------------
def _bad_cases():
    q, k, c = torch.randn(6, 4), torch.randn(6, 4), torch.randn(5, 4)
    p = torch.arange(6)
    return [
        (dict(queries=q, temperature=0.0), ValueError, "temperature"),
        (dict(queries=q, temperature=-1.0), ValueError, "temperature"),
        (dict(queries=q, temperature=torch.tensor(-0.5)), ValueError, "temperature"),
        (dict(queries=q, temperature=torch.ones(2)), ValueError, "temperature"),
        (dict(queries=q[0], temperature=0.1), ValueError, "queries"),
        (dict(queries=q.long(), temperature=0.1), TypeError, "queries"),
        (dict(queries=q, keys=torch.randn(6, 5), temperature=0.1), ValueError, "keys"),
        (dict(queries=q, keys=k.double(), temperature=0.1), TypeError, "keys"),
        (dict(queries=q, keys=torch.randn(7, 4), temperature=0.1), ValueError, "positives"),
        (dict(queries=q, keys=k, queue=torch.randn(5, 3), temperature=0.1), ValueError, "queue"),
        (dict(queries=q, keys=k, positives=p.float(), temperature=0.1), TypeError, "positives"),
        (dict(queries=q, keys=k, positives=p[:5], temperature=0.1), ValueError, "positives"),
        (dict(queries=q, keys=k, positives=p + 1, temperature=0.1), ValueError, "positives"),
        (dict(queries=q, keys=k, positives=p - 1, temperature=0.1), ValueError, "positives"),
        (dict(queries=q, positives=p, temperature=0.1), ValueError, "positives"),  # self as positive
        (dict(queries=q, keys=k, positives=p * 0, symmetric=True, temperature=0.1), ValueError, "permutation"),
        (dict(queries=q, keys=k, queue=c, symmetric=True, temperature=0.1), ValueError, "symmetric"),
        (dict(queries=q, symmetric=True, temperature=0.1), ValueError, "symmetric"),
        (dict(queries=q, keys=k, batch_negatives=False, temperature=0.1), ValueError, "batch_negatives"),
        (dict(queries=q[:5], temperature=0.1), ValueError, "even"),
        (dict(queries=q, keys=k, reduction="avg", temperature=0.1), ValueError, "reduction"),
        (dict(queries=q, keys=k, normalize=1, temperature=0.1), TypeError, "normalize"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs(case):
    kwargs, err, match = _bad_cases()[case]
    with pytest.raises(err, match=match):
        ops.info_nce(**kwargs, backend="reference")
    p = kwargs.get("positives")
    if p is not None and p.shape == (6,) and not p.is_floating_point() and match == "positives":
        # a value error: with value checks off the kernels read nothing on the host and do not
        # crash; a positive they cannot find counts as logit 0
        with pygen.value_checks(False):
            assert torch.isfinite(ops.info_nce(**kwargs, backend="cpu"))


def test_group_needs_a_kernel_backend():
    q = torch.randn(4, 3)
    with pytest.raises(ValueError, match="torch.distributed|kernel backend"):
        ops.info_nce(q, temperature=0.1, group=object(), backend="reference")
