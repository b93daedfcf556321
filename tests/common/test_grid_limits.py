"""CUDA grids stop at 65,535 programs in y and z (2^31 - 1 in x): launchers put unbounded counts
(batch, sequences, K blocks) in x (docs/ARCHITECTURE.md, house style).

Most checks record the grids a launcher asks for without running a kernel (the kernel object in
the launcher's module is replaced by a recorder), so a batch of 100,000 costs nothing under the
interpreter; the folded index arithmetic is run by the families' own tests and, for the chunked
prefill launch, below at a small limit. On a GPU the real launches run at the large sizes.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close_to_ref, requires_cuda

BIG = 100_000  # > 65,535
Y_Z_MAX = 65535
X_MAX = 2**31 - 1


class _Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kw)`` records the grid."""

    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.grids.append(tuple(grid(kwargs) if callable(grid) else grid))

        return launch


def _record(monkeypatch, module, *names):
    recs = {n: _Recorder() for n in names}
    for n, r in recs.items():
        monkeypatch.setattr(module, n, r)
    return recs


def _assert_fits(grids, what):
    assert grids, f"{what}: nothing launched"
    for g in grids:
        g = tuple(g) + (1,) * (3 - len(g))
        assert g[0] <= X_MAX and g[1] <= Y_Z_MAX and g[2] <= Y_Z_MAX, f"{what}: grid {g} passes CUDA's limits"


def _programs(grids):
    n = 0
    for g in grids:
        p = 1
        for d in g:
            p *= d
        n += p
    return n


# ---- flows: conv 1x1 (tabular flows: S = 1, large batches) -----------------------------------
def test_conv1x1_grid_folds_the_batch_into_x(monkeypatch):
    from pygen.kernels import flows

    rec = _record(monkeypatch, flows, "_conv1x1_fwd_kernel")["_conv1x1_fwd_kernel"]
    x = torch.zeros((BIG, 2, 1))
    flows.conv1x1_fwd(x, torch.eye(2), torch.empty_like(x))
    _assert_fits(rec.grids, "conv1x1_fwd")
    assert _programs(rec.grids) == BIG  # one S block and one C block per sample


def test_conv1x1_folded_grid_matches_reference(gen):
    """Several S blocks of several samples share grid x: each program finds its (sample, block)."""
    from pygen.kernels import flows

    x = torch.randn((3, 5, 600), generator=gen)  # 3 S blocks of 256 per sample on the CPU
    w = torch.randn((5, 5), generator=gen)
    y = torch.full_like(x, float("nan"))
    flows.conv1x1_fwd(x, w, y)
    assert_close_to_ref(y, torch.einsum("oi,bis->bos", w.double(), x.double()), what="conv1x1 y")


# ---- flows: coupling (the batch is in grid x) -------------------------------------------------
def test_coupling_grids_put_the_batch_in_x(monkeypatch):
    """A million samples of 4096 values: the batch blocks go into grid x (they were grid y, which
    stops at 65,535 blocks). Stride-0 views stand in for the tensors: only the grid is recorded."""
    from pygen.kernels import flows

    names = ("_affine_coupling_fwd_kernel", "_affine_coupling_bwd_kernel", "_additive_coupling_fwd_kernel")
    rec = _record(monkeypatch, flows, *names)
    b, n = 1_000_000, 4096
    v = torch.zeros(1, n).expand(b, n)
    flows.affine_coupling_fwd(v, v, v, v, torch.zeros(1, 1).expand(b, 1), 2.0, False)
    flows.affine_coupling_bwd(v, v, v, v, torch.zeros(b), v, v, v, 2.0, True)
    flows.additive_coupling_fwd(v, v, v, False)
    bb, _ = flows.coupling_blocks(b, n, False)
    for name in names:
        _assert_fits(rec[name].grids, name)
        assert rec[name].grids[0][0] == -(-b // bb), (name, rec[name].grids)


# ---- MLA prefill: the batch is in grid x -----------------------------------------------------
def _varlen(batch, h, d, dv, lens=None):
    lens = torch.ones(batch, dtype=torch.int64) if lens is None else lens
    cu = torch.zeros(batch + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0).to(torch.int32)
    total = int(cu[-1])
    q = torch.zeros((total, h, d))
    v = torch.zeros((total, h, dv))
    return q, q.clone(), v, cu, int(lens.max())


def test_mla_prefill_grids_fold_the_batch_into_x(monkeypatch):
    from pygen.kernels import mla

    recs = _record(
        monkeypatch,
        mla,
        "_mla_prefill_fwd_kernel",
        "_mla_prefill_bwd_preprocess_kernel",
        "_mla_prefill_bwd_dkdv_kernel",
        "_mla_prefill_bwd_dq_kernel",
    )
    q, k, v, cu, mx = _varlen(BIG, 2, 16, 16)
    out, lse = torch.empty_like(v), torch.empty((2, q.shape[0]))
    mla.mla_prefill_fwd(q, k, v, cu, cu, mx, mx, out, lse, 0.25, True)
    mla.mla_prefill_bwd(
        out,
        lse,
        q,
        k,
        v,
        out,
        lse,
        cu,
        cu,
        mx,
        mx,
        torch.empty_like(q),
        torch.empty_like(k),
        torch.empty_like(v),
        0.25,
        True,
    )
    for name, rec in recs.items():
        _assert_fits(rec.grids, name)
    # one row block per sequence and head
    assert _programs(recs["_mla_prefill_fwd_kernel"].grids) == BIG * 2
    assert _programs(recs["_mla_prefill_bwd_dq_kernel"].grids) == BIG * 2
    assert _programs(recs["_mla_prefill_bwd_dkdv_kernel"].grids) == BIG * 2


def test_batch_chunks_respect_grid_x():
    from pygen.kernels import mla

    assert mla.batch_chunks(7, 10) == [(0, 10)]
    assert mla.batch_chunks(3, 10, max_x=7) == [(0, 2), (2, 2), (4, 2), (6, 2), (8, 2)]
    assert mla.batch_chunks(9, 4, max_x=7) == [(0, 1), (1, 1), (2, 1), (3, 1)]  # one sequence at least
    chunks = mla.batch_chunks(2**20, 3 * 2**11)  # 2^20 blocks x 6,144 sequences > 2^31 - 1
    assert sum(n for _, n in chunks) == 3 * 2**11 and all(n * 2**20 <= X_MAX for _, n in chunks)


def test_mla_prefill_split_launches_match_one_launch(monkeypatch, gen):
    """Force a split of the batch over several launches (grid x limit lowered to 3 row blocks):
    forward and backward must equal the single-launch result bit for bit."""
    from pygen import ops
    from pygen.kernels import mla

    lens = torch.tensor([5, 40, 1, 33, 0, 17])
    q, k, v, cu, _ = _varlen(len(lens), 2, 24, 16, lens)
    q, k, v = (torch.randn(t.shape, generator=gen) for t in (q, k, v))
    go = torch.randn((q.shape[0], 2, 16), generator=gen)

    def run():
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        out, lse = ops.mla_prefill(qq, kk, vv, cu, cu, backend="triton")
        (out * go).sum().backward()
        return out.detach(), lse, qq.grad, kk.grad, vv.grad

    whole = run()
    monkeypatch.setattr(mla, "MAX_GRID_X", 3)
    parts = run()
    for a, b in zip(whole, parts):
        assert torch.equal(a, b)


def test_mla_triton_refuses_more_heads_than_grid_y():
    from pygen import ops

    h = Y_Z_MAX + 1
    q = torch.zeros((1, h, 1))
    cu = torch.tensor([0, 1], dtype=torch.int32)
    with pytest.raises(ValueError, match="at most 65535 heads"):
        ops.mla_prefill(q, q, q, cu, cu, backend="triton")
    lse = torch.zeros((h, 1))
    with pytest.raises(ValueError, match="at most 65535 heads"):
        ops.merge_attn_states(q, lse, q, lse, backend="triton")
    ops.merge_attn_states(q, lse, q, lse, backend="reference")  # the reference has no such limit


# ---- FP8 quantisation: K / 128 blocks (the token count in the wgrad path) ---------------------
def test_fp8_quantize_grids_fold_k_blocks_into_x(monkeypatch):
    from pygen.kernels import fp8

    recs = _record(monkeypatch, fp8, "_quantize_1x128_fwd_kernel", "_quantize_128x128_fwd_kernel")
    kblocks = Y_Z_MAX + 2
    x = torch.zeros((1, 128 * kblocks), dtype=torch.bfloat16)
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn)
    fp8.quantize_1x128_fwd(x, q, torch.empty((1, kblocks)), False)
    fp8.quantize_128x128_fwd(x, q, torch.empty((1, kblocks)), False)
    for name, rec in recs.items():
        _assert_fits(rec.grids, name)
        assert _programs(rec.grids) == kblocks


# ---- real launches at the large sizes (GPU) --------------------------------------------------
@requires_cuda
def test_conv1x1_large_batch_on_gpu(gen):
    from pygen import ops
    from pygen.ref import flows as ref

    x = torch.randn((BIG, 3), generator=gen)  # tabular: [B, C], S = 1
    w = torch.randn((3, 3), generator=gen) + 3 * torch.eye(3)
    y, _ = ops.inv_conv1x1(x.cuda(), w.cuda(), backend="triton")
    ry, _ = ref.inv_conv1x1(x.double(), w.double())
    assert_close_to_ref(y, ry, atol=1e-4, what="conv1x1 y")


@requires_cuda
def test_mla_prefill_large_batch_on_gpu(gen):
    """BIG one-token sequences: out = v and lse = scale q.k per token and head (closed form)."""
    from pygen import ops

    q, k, v, cu, _ = _varlen(BIG, 2, 24, 16)
    q, k, v = (torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (q, k, v))
    out, lse = ops.mla_prefill(
        q.float().cuda(), k.float().cuda(), v.float().cuda(), cu.cuda(), cu.cuda(), backend="triton"
    )
    assert_close_to_ref(out, v, atol=1e-5, what="out")
    assert_close_to_ref(lse, (q * k).sum(-1).T * 24**-0.5, atol=1e-4, what="lse")


@requires_cuda
def test_fp8_quantize_many_k_blocks_on_gpu(gen):
    from pygen import ops
    from pygen.ref import fp8 as ref

    x = torch.randn((2, 128 * (Y_Z_MAX + 2)), generator=gen).cuda()
    q, s = ops.quantize_fp8_1x128(x, backend="triton")
    rq, rs = ref.quantize_1x128(x.cpu(), "fp32", False)
    assert torch.equal(s.cpu(), rs)
    assert torch.equal(q.cpu().view(torch.uint8), rq.view(torch.uint8))
