"""Value checks and host synchronisation (issue 11; docs/ARCHITECTURE.md, "Value checks and host
synchronisation").

* The switch: pygen.set_value_checks / pygen.value_checks / PYGEN_VALUE_CHECKS, and the one
  predicate every family asks (pygen/ops/_common_checks.py::checking_values).
* With value checks off, every public op on its sync-free backend (triton, run by the
  interpreter here) reads no tensor value on the host: Tensor.item / tolist / nonzero / unique /
  equal / __bool__ / __int__ / __float__ / __index__ and torch.nonzero / unique / equal are
  patched to fail for the call. A GPU sync always goes through one of these from Python (or
  through a C++ op with a data-dependent shape, which the ops do not use on these paths). With
  checks on, the same harness sees the ops that have value checks read values (so it would see
  a regression). made_sample reads its degree vectors for its schedule whatever the switch
  (documented in its docstring) and is checked separately.
* mla_cache_append: positions that hit one slot give last-writer-wins (row-major order) on the
  reference and the Triton backend, eagerly and under torch.compile.
* The benchmark's CUDA-graph timing says when it falls back to do_bench.
"""

from __future__ import annotations

import contextlib
import traceback

import pytest
import torch
from helpers import make_rois, public_ops

import pygen
from pygen import _backend, ops
from pygen.ops import _common_checks
from pygen.ref import fp8 as fp8_ref, made as made_ref, mla as mla_ref

TRITON_OK, TRITON_WHY = _backend.backend_status("triton", "cpu")
needs_triton = pytest.mark.skipif(not TRITON_OK, reason=f"triton on cpu: {TRITON_WHY}")

TENSOR_READS = ("item", "tolist", "nonzero", "unique", "equal", "__bool__", "__int__", "__float__", "__index__")
TORCH_READS = ("nonzero", "unique", "equal", "unique_consecutive")


@contextlib.contextmanager
def forbid_host_reads():
    """Patch every Python-level way of reading a tensor value on the host to record the call and
    raise; yields the list of recorded reads (an op that swallows the error is still caught)."""
    hits: list[str] = []
    saved = []

    def patch(owner, attr, label):
        orig = getattr(owner, attr)

        def fail(*args, **kwargs):
            where = "".join(traceback.format_stack(limit=4)[:-1]).strip().splitlines()
            hits.append(f"{label} at {' | '.join(w.strip() for w in where[-4:])}")
            raise RuntimeError(f"host read of a tensor value: {label}")

        saved.append((owner, attr, orig))
        setattr(owner, attr, fail)

    for a in TENSOR_READS:
        patch(torch.Tensor, a, f"Tensor.{a}")
    for a in TORCH_READS:
        patch(torch, a, f"torch.{a}")
    try:
        yield hits
    finally:
        for owner, attr, orig in reversed(saved):
            setattr(owner, attr, orig)


def _run_without_reads(call):
    with forbid_host_reads() as hits:
        try:
            call()
        except RuntimeError as exc:
            if "host read" not in str(exc):
                raise
    return hits


# ---- the switch ----------------------------------------------------------------------------------
def test_switch_api(monkeypatch):
    monkeypatch.delenv("PYGEN_VALUE_CHECKS", raising=False)
    assert pygen.value_checks_enabled() and _common_checks.checking_values()
    try:
        pygen.set_value_checks(False)
        assert not pygen.value_checks_enabled() and not _common_checks.checking_values()
        with pygen.value_checks(True):
            assert _common_checks.checking_values()
            with pygen.value_checks(False):
                assert not _common_checks.checking_values()
            assert _common_checks.checking_values()
        assert not pygen.value_checks_enabled()
        pygen.set_value_checks(None)  # back to the environment's default
        assert pygen.value_checks_enabled()
        for off in ("0", "false", "OFF", "no"):
            monkeypatch.setenv("PYGEN_VALUE_CHECKS", off)
            assert not pygen.value_checks_enabled()
        monkeypatch.setenv("PYGEN_VALUE_CHECKS", "1")
        assert pygen.value_checks_enabled()
        with pygen.value_checks(False):  # an explicit setting beats the environment
            assert not pygen.value_checks_enabled()
        monkeypatch.setenv("PYGEN_VALUE_CHECKS", "maybe")
        with pytest.raises(ValueError, match="PYGEN_VALUE_CHECKS"):
            pygen.value_checks_enabled()
        monkeypatch.delenv("PYGEN_VALUE_CHECKS")
        with pytest.raises(TypeError):
            pygen.set_value_checks(0)
        with pytest.raises(TypeError):
            with pygen.value_checks("off"):
                pass

        @pygen.value_checks(False)
        def decorated():
            return _common_checks.checking_values()

        assert decorated() is False and _common_checks.checking_values()
    finally:
        pygen.set_value_checks(None)


def test_checking_values_off_for_fake_tensors_and_while_compiling():
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake = FakeTensorMode().from_tensor(torch.zeros(3))
    assert _common_checks.tracing(fake) and not _common_checks.checking_values([fake])
    assert _common_checks.checking_values(torch.zeros(3))
    seen = []

    def f(x):
        seen.append(_common_checks.checking_values(x))
        return x + 1

    torch.compile(f, backend="eager", fullgraph=True)(torch.zeros(2))
    assert seen and not any(seen)


def test_value_checks_off_skips_a_bad_value_that_on_refuses():
    """The switch really turns the checks off: bad box batch indices raise only with checks on
    (the kernels make such a RoI zeros)."""
    x = torch.randn(1, 2, 5, 5)
    boxes = torch.tensor([[3.0, 0, 0, 2, 2]])
    with pytest.raises(ValueError, match="batch index"):
        ops.roi_align(x, boxes, 2, backend="reference")
    with pygen.value_checks(False):
        out = ops.roi_align(x, boxes, 2, backend="cpu" if _backend.backend_status("cpu", "cpu")[0] else "reference")
    assert out.shape == (1, 2, 2, 2)


# ---- every op, value checks off: no host read ---------------------------------------------------
def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _roi_calls():
    g = _g(1)
    x = torch.randn(2, 8, 12, 10, generator=g)
    rois = make_rois(5, 2, 12, 10, 0.5, g)
    boxes_list = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    feats = [torch.randn(2, 8, 16, 16, generator=g), torch.randn(2, 8, 8, 8, generator=g)]
    big = make_rois(5, 2, 64, 64, 1.0, g) * torch.tensor([1.0, 8, 8, 8, 8])
    big[:, 0] = rois[:, 0]
    t = "triton"
    return {
        "roi_align": lambda: ops.roi_align(x, rois, 3, 0.5, 2, True, backend=t),
        "roi_align[list]": lambda: ops.roi_align(x, boxes_list, 3, 0.5, -1, backend=t),
        "roi_pool": lambda: ops.roi_pool(x, rois, 3, 0.5, backend=t),
        "ps_roi_align": lambda: ops.ps_roi_align(x, rois, 2, 0.5, 2, backend=t),
        "ps_roi_pool": lambda: ops.ps_roi_pool(x, rois, 2, 0.5, backend=t),
        "multi_scale_roi_align": lambda: ops.multi_scale_roi_align(feats, big, 2, [1 / 4, 1 / 8], 2, backend=t),
    }


def _flows_calls():
    g = _g(2)
    t = "triton"
    a = torch.randn(3, 5, 5, generator=g)
    x = torch.randn(2, 4, 3, 3, generator=g)
    xs, ls, sh = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    c = 4
    perm = torch.eye(c)[torch.randperm(c, generator=g)]
    lower, upper = torch.randn(c, c, generator=g), torch.randn(c, c, generator=g)
    diag = torch.rand(c, generator=g) + 0.5
    w = torch.linalg.qr(torch.randn(c, c, generator=g))[0]
    z = torch.randn(3, 6, generator=g)
    m = 2
    return {
        "slogdet": lambda: ops.slogdet(a, backend=t),
        "affine_coupling": lambda: ops.affine_coupling(xs, ls, sh, backend=t),
        "affine_coupling[reverse]": lambda: ops.affine_coupling(xs, ls, sh, reverse=True, backend=t),
        "additive_coupling": lambda: ops.additive_coupling(xs, sh, backend=t),
        "actnorm": lambda: ops.actnorm(x, torch.randn(c, generator=g), torch.randn(c, generator=g), backend=t),
        "actnorm_init": lambda: ops.actnorm_init(x, backend=t),
        "inv_conv1x1": lambda: ops.inv_conv1x1(x, w, backend=t),
        "inv_conv1x1[reverse]": lambda: ops.inv_conv1x1(x, w, reverse=True, backend=t),
        "inv_conv1x1_lu": lambda: ops.inv_conv1x1_lu(x, perm, lower, upper, diag, backend=t),
        "inv_conv1x1_lu[reverse]": lambda: ops.inv_conv1x1_lu(x, perm, lower, upper, diag, reverse=True, backend=t),
        # planar and radial have only the reference backend
        "planar": lambda: ops.planar(
            z,
            torch.randn(6, generator=g) * 0.1,
            torch.randn(6, generator=g) * 0.1,
            torch.randn(1, generator=g),
            backend="reference",
        ),
        "radial": lambda: ops.radial(
            z,
            torch.randn(6, generator=g),
            torch.randn(1, generator=g).abs(),
            torch.randn(1, generator=g),
            backend="reference",
        ),
        "sylvester": lambda: ops.sylvester(
            z,
            torch.randn(6, m, generator=g) * 0.1,
            torch.randn(m, 6, generator=g) * 0.1,
            torch.randn(m, generator=g),
            backend=t,
        ),
    }


def _made_calls():
    g = _g(3)
    t = "triton"
    d, h = 6, 10
    in_deg = torch.randperm(d, generator=g) + 1
    hid = torch.randint(1, d, (h,), generator=g)
    w = torch.randn(h, d, generator=g)
    b = torch.randn(h, generator=g)
    x = torch.randn(5, d, generator=g)
    mask = made_ref.autoregressive_mask(in_deg, hid).float()
    wo = torch.randn(2 * d, h, generator=g)
    out_deg = in_deg.repeat(2)
    hx = torch.randn(5, h, generator=g)
    bits = ops.pack_bits((torch.rand(5, d, generator=g) > 0.5).float())
    return {
        "masked_linear": lambda: ops.masked_linear(x, w, b, in_deg, hid, activation="relu", backend=t),
        "masked_linear[mask]": lambda: ops.masked_linear(x, w, b, mask=mask, backend=t),
        "masked_linear_bits": lambda: ops.masked_linear_bits(bits, d, w, b, in_deg, hid, backend=t),
        "masked_linear_plain": lambda: ops.masked_linear_plain(x, w, b, mask > 0, backend=t),
        "made_affine_forward": lambda: ops.made_affine_forward(hx, wo, None, hid, out_deg, x, backend=t),
        "pack_bits": lambda: ops.pack_bits((x > 0).float()),
    }


def _mla_calls():
    g = _g(4)
    t = "triton"
    q, kv, bt, sl = mla_ref.random_decode_problem((6, 3), 1, 16, 4, g)
    pos = torch.tensor([[5, 5], [2, -1]], dtype=torch.int32)  # a duplicate: last writer wins
    lat, rope = torch.randn(2, 2, 512, generator=g), torch.randn(2, 2, 64, generator=g)
    lq, lk = (3, 4), (5, 4)
    pq, pk = torch.randn(7, 2, 24, generator=g), torch.randn(9, 2, 24, generator=g)
    pv = torch.randn(9, 2, 16, generator=g)
    cq, ck = mla_ref.cu_seqlens(lq), mla_ref.cu_seqlens(lk)
    oa, ob = torch.randn(4, 3, 16, generator=g), torch.randn(4, 3, 16, generator=g)
    la, lb = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    return {
        "mla_decode": lambda: ops.mla_decode(q, kv, bt, sl, backend=t),
        "mla_cache_append": lambda: ops.mla_cache_append(kv.clone(), bt, pos, lat, rope, backend=t),
        "mla_prefill": lambda: ops.mla_prefill(pq, pk, pv, cq, ck, max_seqlen_q=4, max_seqlen_k=5, backend=t),
        "merge_attn_states": lambda: ops.merge_attn_states(oa, la, ob, lb, backend=t),
    }


def _fp8_calls():
    g = _g(5)
    t = "triton"
    x = torch.randn(16, 128, generator=g)
    w = torch.randn(128, 128, generator=g) * 0.05
    q, s = fp8_ref.quantize_1x128(x)
    wq, ws = fp8_ref.quantize_128x128(w)
    mi, _ = fp8_ref.grouped_layout([100], device="cpu")
    qg, sg = fp8_ref.quantize_1x128(torch.randn(128, 128, generator=g))
    bq, bs = wq[None], ws[None]
    gq, gs = fp8_ref.quantize_1x128(torch.randn(128, 16, generator=g).t().contiguous())
    return {
        "quantize_fp8_1x128": lambda: ops.quantize_fp8_1x128(x, backend=t),
        "quantize_fp8_128x128": lambda: ops.quantize_fp8_128x128(w, backend=t),
        "dequantize_fp8": lambda: ops.dequantize_fp8(q, s),
        "fp8_gemm": lambda: ops.fp8_gemm(q, s, wq, ws, out_dtype=torch.float32, backend=t),
        "fp8_gemm_grouped": lambda: ops.fp8_gemm_grouped(qg, sg, bq, bs, mi, out_dtype=torch.float32, backend=t),
        "fp8_gemm_wgrad": lambda: ops.fp8_gemm_wgrad(gq, gs, gq, gs, backend=t),
    }


def _moe_calls():
    g = _g(6)
    t = "triton"
    tok, e, hdim, inter, k = 6, 4, 16, 8, 2
    logits = torch.randn(tok, e, generator=g)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(tok)]).to(torch.int32)
    wts = torch.rand(tok, k, generator=g)
    x = torch.randn(tok, hdim, generator=g)
    w1 = torch.randn(e, 2 * inter, hdim, generator=g) * 0.1
    w2 = torch.randn(e, hdim, inter, generator=g) * 0.1
    perm_out = ops.moe_permute(x, ids, e, backend="reference")
    w1q, w1s, w2q, w2s = ops.quantize_moe_weights_fp8(
        torch.randn(e, 256, 128, generator=g) * 0.1, torch.randn(e, 128, 128, generator=g) * 0.1, backend="reference"
    )
    x8 = torch.randn(tok, 128, generator=g)
    return {
        "moe_route": lambda: ops.moe_route(logits, k, backend=t),
        "moe_align": lambda: ops.moe_align(ids, e, 4, backend=t),
        "moe_permute": lambda: ops.moe_permute(x, ids, e, backend=t),
        "moe_unpermute": lambda: ops.moe_unpermute(perm_out[0], perm_out[1], wts, top_k=k, backend=t),
        "fused_moe": lambda: ops.fused_moe(x, w1, w2, wts, ids, backend=t),
        "quantize_moe_weights_fp8": lambda: ops.quantize_moe_weights_fp8(
            w1.repeat(1, 8, 8), w2.repeat(1, 8, 16), backend=t
        ),
        "fused_moe_fp8": lambda: ops.fused_moe_fp8(x8, w1q, w1s, w2q, w2s, wts, ids, backend=t),
    }


def _losses_calls():
    g = _g(12)
    t = "triton"
    h, w, b = torch.randn(9, 16, generator=g), torch.randn(70, 16, generator=g) * 0.3, torch.randn(70, generator=g)
    tgt = torch.randint(0, 70, (9,), generator=g)
    tgt[2] = -100
    return {
        "linear_cross_entropy": lambda: ops.linear_cross_entropy(h, w, tgt, b, z_loss=1e-3, backend=t),
        "linear_log_probs": lambda: ops.linear_log_probs(h, w, tgt.clamp(min=0), return_entropy=True, backend=t),
        "info_nce": lambda: (
            ops.info_nce(h[:8], temperature=0.2, backend=t)
            + ops.info_nce(h, h.flip(0), temperature=0.2, positives=torch.arange(9), queue=w, backend=t)
            + ops.info_nce(h, h.flip(0), temperature=torch.tensor(0.2), symmetric=True, backend=t)
        ),
        **_grpo_calls(h, w, tgt.clamp(min=0), g),
    }


def _grpo_calls(h, w, tokens, g):
    lp, adv = -torch.rand(3, 3, generator=g), torch.randn(3, generator=g)
    old, ref_lp, mask = lp + 0.1, lp - 0.2, torch.rand(3, 3, generator=g) > 0.3
    t = "triton"
    return {
        "grpo_loss": lambda: (
            ops.grpo_loss(lp, old, ref_lp, adv, mask, backend=t)
            + ops.grpo_loss(lp, None, None, adv, mask.float(), beta=0.0, loss_type="dapo", backend=t)
        ),
        "linear_grpo_loss": lambda: ops.linear_grpo_loss(
            h.view(3, 3, -1), w, tokens.view(3, 3), old, ref_lp, adv, mask, loss_type="dr_grpo", backend=t
        ),
        "group_advantages": lambda: (
            ops.group_advantages(adv.repeat(2), 3) + ops.group_advantages(adv.repeat(2), 2, "batch")
        ),
    }


CALLS = {}
for _family in (_roi_calls, _flows_calls, _made_calls, _mla_calls, _fp8_calls, _moe_calls, _losses_calls):
    CALLS.update({name: (_family, name) for name in _family()})

# ops whose checks read values: with checks on, the harness must see them read (so it sees syncs)
READS_WITH_CHECKS_ON = (
    "roi_align",
    "roi_align[list]",
    "roi_pool",
    "ps_roi_align",
    "ps_roi_pool",
    "multi_scale_roi_align",
    "inv_conv1x1_lu[reverse]",
    "masked_linear[mask]",
    "mla_decode",
    "mla_cache_append",
    "mla_prefill",
    "moe_align",
    "moe_permute",
    "fused_moe",
    "fused_moe_fp8",
    "linear_cross_entropy",
    "linear_log_probs",
    "info_nce",
    "linear_grpo_loss",
)


def _call(name):
    family, key = CALLS[name]
    return family()[key]


def test_every_public_op_is_covered():
    names = {n.split("[")[0] for n in CALLS}
    public = public_ops()
    # made_sample reads its degrees for the schedule (test below); sort_hidden_units is a helper on
    # parameters, not a hot-path op
    assert public - names == {"made_sample", "sort_hidden_units"}, public - names


@needs_triton
@pytest.mark.parametrize("name", sorted(CALLS))
def test_no_host_read_with_value_checks_off(name):
    call = _call(name)
    call()  # warm-up: interpreter caches, lru caches, imports
    with pygen.value_checks(False):
        hits = _run_without_reads(call)
    assert not hits, f"{name} read tensor values on the host with value checks off:\n" + "\n".join(hits)
    if name in READS_WITH_CHECKS_ON:
        assert _run_without_reads(call), f"{name}: its value checks should read values when on"


def _backward_calls():
    g = _g(10)
    t = "triton"
    x = torch.randn(2, 4, 9, 8, generator=g, requires_grad=True)
    rois = make_rois(4, 2, 9, 8, 1.0, g)
    pq = torch.randn(7, 2, 24, generator=g, requires_grad=True)
    pk, pv = torch.randn(9, 2, 24, generator=g), torch.randn(9, 2, 16, generator=g)
    cq, ck = mla_ref.cu_seqlens((3, 4)), mla_ref.cu_seqlens((5, 4))
    d, h = 6, 10
    xm = torch.randn(5, d, generator=g, requires_grad=True)
    w = torch.randn(h, d, generator=g, requires_grad=True)
    in_deg, hid = torch.randperm(d, generator=g) + 1, torch.randint(1, d, (h,), generator=g)
    tok, e, hdim, inter, k = 6, 4, 16, 8, 2
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(tok)]).to(torch.int32)
    xe = torch.randn(tok, hdim, generator=g, requires_grad=True)
    w1, w2 = torch.randn(e, 2 * inter, hdim, generator=g) * 0.1, torch.randn(e, hdim, inter, generator=g) * 0.1
    wts = torch.rand(tok, k, generator=g)
    xs = torch.randn(3, 6, generator=g, requires_grad=True)
    return {
        "roi_align": lambda: ops.roi_align(x, rois, 2, 1.0, 2, backend=t).sum().backward(),
        "ps_roi_pool": lambda: ops.ps_roi_pool(x, rois, 2, 1.0, backend=t).sum().backward(),
        "mla_prefill": lambda: sum(
            o.sum() for o in ops.mla_prefill(pq, pk, pv, cq, ck, max_seqlen_q=4, max_seqlen_k=5, backend=t)
        ).backward(),
        "masked_linear": lambda: ops.masked_linear(xm, w, None, in_deg, hid, backend=t).sum().backward(),
        "fused_moe": lambda: ops.fused_moe(xe, w1, w2, wts, ids, backend=t).sum().backward(),
        "linear_cross_entropy": lambda: ops.linear_cross_entropy(
            xs, torch.linspace(-1, 1, 30).view(5, 6), torch.tensor([0, -100, 4]), backend=t
        ).backward(),
        "info_nce": lambda: ops.info_nce(xs, xs.flip(0) * 0.5, temperature=0.3, symmetric=True, backend=t).backward(),
        "affine_coupling": lambda: sum(
            o.sum() for o in ops.affine_coupling(xs, xs * 0.5, xs + 1, backend=t)
        ).backward(),
        "grpo_loss": lambda: ops.grpo_loss(
            xs, xs.detach() + 0.1, None, xs[:, 0].detach(), xs > 0, beta=0.0, backend=t
        ).backward(),
    }


@needs_triton
@pytest.mark.parametrize("name", sorted(_backward_calls()))
def test_no_host_read_in_backward_with_value_checks_off(name):
    call = _backward_calls()[name]
    call()
    with pygen.value_checks(False):
        hits = _run_without_reads(call)
    assert not hits, f"{name} backward read tensor values on the host:\n" + "\n".join(hits)


@needs_triton
def test_mla_prefill_without_max_seqlen_reads_cu_seqlens():
    """A missing max_seqlen is a launch parameter the op reads (documented), whatever the switch;
    given, nothing is read with checks off (test_no_host_read_with_value_checks_off), and an
    upper bound gives the same result as the exact maximum."""
    g = _g(11)
    pq, pk = torch.randn(7, 2, 24, generator=g), torch.randn(9, 2, 24, generator=g)
    pv = torch.randn(9, 2, 16, generator=g)
    cq, ck = mla_ref.cu_seqlens((3, 4)), mla_ref.cu_seqlens((5, 4))
    with pygen.value_checks(False):
        assert _run_without_reads(lambda: ops.mla_prefill(pq, pk, pv, cq, ck, backend="triton"))
        want = ops.mla_prefill(pq, pk, pv, cq, ck, backend="triton")
        got = ops.mla_prefill(pq, pk, pv, cq, ck, max_seqlen_q=7, max_seqlen_k=9, backend="triton")
    torch.testing.assert_close(got, want)  # an upper bound gives the same result
    with pytest.raises(ValueError, match="max_seqlen_q"):
        ops.mla_prefill(pq, pk, pv, cq, ck, max_seqlen_q=3, backend="triton")


@needs_triton
def test_masked_linear_plain_no_host_read():
    g = _g(7)
    x, w = torch.randn(3, 5, generator=g), torch.randn(4, 5, generator=g)
    mask = torch.rand(4, 5, generator=g) > 0.5
    call = lambda: ops.made.masked_linear_plain(x, w, None, mask, backend="triton")
    call()
    with pygen.value_checks(False):
        assert not _run_without_reads(call)


def test_made_sample_reads_only_its_degrees():
    """made_sample builds its schedule from the degree vectors on the host (its docstring): with
    value checks off it still does, and nothing else changes; the sample is the same."""
    g = _g(8)
    d, h = 5, 8
    in_deg = torch.arange(1, d + 1)
    hid = torch.randint(1, d, (h,), generator=g)
    ws = [torch.randn(h, d, generator=g), torch.randn(2 * d, h, generator=g)]
    bs = [torch.randn(h, generator=g), torch.randn(2 * d, generator=g)]
    degs = [in_deg, hid, in_deg.repeat_interleave(2)]
    noise = torch.randn(3, d, generator=g)
    want = ops.made_sample(ws, bs, degs, noise, kind="gaussian", backend="reference")
    with pygen.value_checks(False):
        got = ops.made_sample(ws, bs, degs, noise, kind="gaussian", backend="reference")
        # the autoregressive check runs on that host copy, so it stays on (it costs no sync)
        with pytest.raises(ValueError, match="not autoregressive"):
            ops.made_sample(ws, bs, [in_deg, hid, in_deg.repeat(2)], noise, kind="gaussian", backend="reference")
    torch.testing.assert_close(got, want)


# ---- mla_cache_append: duplicates are well defined ------------------------------------------------
def _dup_problem(fp8: bool):
    g = _g(9)
    q, kv, bt, sl = mla_ref.random_decode_problem((7, 5), 1, 16, 4, g, fp8=fp8)
    # row 0 writes position 3 three times, row 1 position 1 twice, with padding in between
    pos = torch.tensor([[3, 0, 3, -1, 3], [1, -1, 1, 2, 4]], dtype=torch.int32)
    lat, rope = torch.randn(2, 5, 512, generator=g), torch.randn(2, 5, 64, generator=g)
    return kv, bt, pos, lat, rope


def _expected_last_writer(kv, bt, pos, lat, rope):
    """Write the entries one at a time in row-major order (the sequential meaning of 'last wins')."""
    out = kv.clone()
    page = kv.shape[1]
    for i in range(pos.shape[0]):
        for j in range(pos.shape[1]):
            t = int(pos[i, j])
            if t < 0:
                continue
            blk = int(bt[i, t // page])
            if kv.dtype == torch.uint8:
                out[blk, t % page, 0] = mla_ref.fp8_quantize(lat[i, j], rope[i, j])
            else:
                out[blk, t % page, 0] = torch.cat([lat[i, j], rope[i, j]]).to(kv.dtype)
    return out


def test_append_slots_last_writer_in_row_major_order():
    kv = torch.zeros(3, 2, 1, 4)
    bt = torch.tensor([[0, 1], [1, 2]], dtype=torch.int32)
    # (0, 3) -> page 1 offset 1 = slot 3; (1, 1) -> page 1 offset 1 = slot 3 too: row 1 wins
    pos = torch.tensor([[3, 0, 9], [1, -1, 0]], dtype=torch.int64)
    blk, off, keep = mla_ref.append_slots(kv, bt, pos)
    assert keep.tolist() == [[False, True, False], [True, False, True]]
    assert blk[1, 0].item() == 1 and off[1, 0].item() == 1
    bad_page = torch.tensor([[0, 7]], dtype=torch.int32)  # a page id outside [0, 3)
    assert mla_ref.append_slots(kv, bad_page, torch.tensor([[2, 0]]))[2].tolist() == [[False, True]]
    empty = mla_ref.append_slots(kv, bt[:, :0], torch.tensor([[0], [-1]]))[2]
    assert empty.tolist() == [[False], [False]]


@pytest.mark.parametrize("fp8", [False, True], ids=["float", "fp8"])
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_cache_append_duplicates_last_writer_wins(backend, fp8):
    kv, bt, pos, lat, rope = _dup_problem(fp8)
    want = _expected_last_writer(kv, bt, pos, lat, rope)
    for checks in (True, False):
        with pygen.value_checks(checks):
            got = ops.mla_cache_append(kv.clone(), bt, pos, lat, rope, backend=backend)
        assert torch.equal(got, want), (backend, checks)


@needs_triton
def test_cache_append_bad_positions_skipped_with_checks_off():
    kv, bt, pos, lat, rope = _dup_problem(False)
    bad = pos.clone()
    bad[0, 1] = bt.shape[1] * kv.shape[1] + 3  # beyond the table
    with pytest.raises(ValueError, match="positions max"):
        ops.mla_cache_append(kv.clone(), bt, bad, lat, rope, backend="triton")
    skipped = pos.clone()
    skipped[0, 1] = -1
    want = _expected_last_writer(kv, bt, skipped, lat, rope)
    with pygen.value_checks(False):
        for backend in ("triton", "reference"):
            assert torch.equal(ops.mla_cache_append(kv.clone(), bt, bad, lat, rope, backend=backend), want)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_cache_append_duplicates_under_torch_compile(backend):
    kv, bt, pos, lat, rope = _dup_problem(False)
    want = _expected_last_writer(kv, bt, pos, lat, rope)
    torch._dynamo.reset()

    def step(cache):
        ops.mla_cache_append(cache, bt, pos, lat, rope, backend=backend)
        return cache

    # the reference selects the kept entries with a boolean mask (a data-dependent shape): no fullgraph
    compiled = torch.compile(step, fullgraph=backend == "triton", backend="aot_eager")
    assert torch.equal(compiled(kv.clone()), want)


# ---- the benchmark says when CUDA-graph timing falls back ----------------------------------------
def test_bench_reports_cuda_graph_fallback(monkeypatch):
    pytest.importorskip("triton")
    import triton.testing as tt

    from pygen.tools import harness as H

    monkeypatch.setattr(tt, "do_bench", lambda fn, **kw: [0.01, 0.009, 0.011])

    def no_capture(fn, **kw):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(tt, "do_bench_cudagraph", no_capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    t = H.time_cuda(lambda: None)
    assert t.median_ms == 0.01 and t.timer.startswith("do_bench;") and H.GRAPH_FALLBACK in t.timer
    assert "stream is capturing" in t.timer
    monkeypatch.setattr(tt, "do_bench_cudagraph", lambda fn, **kw: [0.005, 0.004, 0.006])
    assert H.time_cuda(lambda: None).timer == "do_bench_cudagraph"

    row = {
        "op": "mla_decode",
        "shape_label": "b1",
        "dtype": "bfloat16",
        "mode": "fwd",
        "backend": "pygen:triton",
        "kind": "pygen",
        "status": "ok",
        "correct": True,
        "median_ms": 0.01,
        "p20_ms": 0.009,
        "p80_ms": 0.011,
        "samples": None,
        "gbps": None,
        "timer": t.timer,
    }
    table = H.format_table([row])
    assert "pygen:triton (no graph)" in table
    assert H.GRAPH_FALLBACK in table.split("legend:")[1] and "stream is capturing" in table
