"""Masked autoregressive matmul: every backend against the float64 reference (forward and
backward, all activations, strict / non-strict, odd sizes, unsorted degrees, explicit masks),
the tile plan against a brute-force classification, gradcheck, opcheck, torch.compile, and
bad input. Model-level tests (MADE / MAF / IAF, sampling, training) are in test_made_models.py.

The Triton interpreter costs milliseconds per program and per tl.dot step, so the kernel cases
are few and small; the tile size under the interpreter is 32, so the sizes below give zero,
partial and full tiles in every pass.
"""

from __future__ import annotations

import pytest
import torch
from helpers import ATOL, assert_close_to_ref, backend_params, opcheck_registered

from pygen import ops
from pygen.ops import _registry
from pygen.ref import made as ref

PARAMS = [p for p in backend_params() if p.values[1] in ("triton", "reference")]
KERNEL_PARAMS = [p for p in PARAMS if p.values[1] == "triton"]


# tiny problems: single-threaded (tests/conftest.py::one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def _degrees(n: int, d: int, gen: torch.Generator, order: str) -> torch.Tensor:
    deg = torch.randint(1, d + 1, (n,), generator=gen)
    if order == "sorted":
        deg = deg.sort().values
    return deg


def _problem(m, n, k, dtype, device, gen, order="sorted", d=24, noncontig=False):
    x = torch.randn(m, k, generator=gen, dtype=torch.float64)
    w = torch.randn(n, k, generator=gen, dtype=torch.float64) / k**0.5
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    if noncontig:  # x as a column slice, W as a transposed view
        x = torch.cat([x, x], dim=1)[:, ::2]
        w = w.t().contiguous().t()
    ind, outd = _degrees(k, d, gen, order), _degrees(n, d, gen, order)
    cast = lambda t: t.to(device=device, dtype=dtype)
    return cast(x), cast(w), cast(b), ind.to(device), outd.to(device)


def _fwd_bwd(fn, x, w, b, g):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, g)
    return y, grads


def _check(y, grads, x, w, b, g, fn_ref, what, grad_atol_factor=4.0):
    """Flash-Attention rule against float64, with the same-dtype reference as the yardstick."""
    dt = x.dtype
    y64, g64 = _fwd_bwd(fn_ref, x.double(), w.double(), b.double(), g.double())
    ys, gs = _fwd_bwd(fn_ref, x, w, b, g)
    assert y.dtype == dt and y.shape == y64.shape
    assert_close_to_ref(y, y64, ys, what=f"{what} y")
    for name, a, r, s in zip(("dx", "dW", "db"), grads, g64, gs):
        assert a.dtype == dt and a.shape == r.shape, name
        assert_close_to_ref(a, r, s, atol=grad_atol_factor * ATOL[dt], what=f"{what} {name}")


# (m, n, k, activation, strict, degree order, dtypes): every activation, both mask kinds, sorted,
# unsorted and reversed degrees, sizes off the tile size; the 16-bit dtypes on two cases
CASES = [
    (37, 70, 45, "relu", False, "sorted", (torch.float32, torch.float16, torch.bfloat16)),
    (5, 33, 64, "gelu", True, "random", (torch.float32,)),
    (70, 40, 33, "tanh", False, "random", (torch.float32,)),
    (16, 65, 70, "elu", True, "sorted", (torch.float32, torch.bfloat16)),
    (9, 20, 17, None, False, "sorted", (torch.float32,)),
]


@pytest.mark.parametrize("device,backend", PARAMS)
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-{c[3]}-{'strict' if c[4] else 'ge'}-{c[5]}"
)
def test_masked_linear_matches_reference(case, device, backend, gen):
    m, n, k, act, strict, order, dtypes = case
    if backend == "reference":
        dtypes = dtypes + (torch.float64,)
    for dt in dtypes:
        x, w, b, ind, outd = _problem(m, n, k, dt, device, gen, order, noncontig=dt == torch.float16)
        g = torch.randn(m, n, generator=gen, dtype=torch.float64).to(device=device, dtype=dt)
        fn = lambda x_, w_, b_: ops.masked_linear(x_, w_, b_, ind, outd, strict, act, backend=backend)
        fr = lambda x_, w_, b_: ref.masked_linear(x_, w_, b_, ind, outd, strict, act)
        y, grads = _fwd_bwd(fn, x, w, b, g)
        _check(y, grads, x, w, b, g, fr, f"{backend} {dt} {case[:6]}")


@pytest.mark.parametrize("device,backend", PARAMS)
def test_explicit_masks(device, backend, gen):
    """An autoregressive 0/1 mask (reduced to degrees) and an arbitrary one (plain kernel), with
    leading batch dimensions; the float mask is nflows' / pyro's buffer type."""
    m, n, k = 6, 40, 36
    x, w, b, ind, outd = _problem(m, n, k, torch.float32, device, gen, "random")
    ar = ref.autoregressive_mask(ind, outd, strict=True)
    rnd = torch.rand(n, k, generator=gen).to(device) < 0.5
    assert ref.degrees_from_mask(ar) is not None and ref.degrees_from_mask(rnd) is None
    for mask, act in ((ar.float(), "relu"), (rnd, "tanh")):
        x3 = x.view(2, 3, k)
        g = torch.randn(2, 3, n, generator=gen).to(device)
        fn = lambda x_, w_, b_: ops.masked_linear(x_, w_, b_, mask=mask, activation=act, backend=backend)
        fr = lambda x_, w_, b_: ref.masked_matmul(x_, w_, b_, mask, act)
        y, grads = _fwd_bwd(fn, x3, w, b, g)
        _check(y, grads, x3, w, b, g, fr, f"mask {backend} {act}")


@pytest.mark.parametrize("device,backend", PARAMS)
def test_permuted_units_give_the_same_function(device, backend, gen):
    """Permuting output units (rows of W, b, out degrees) permutes y; permuting inputs (columns of
    W, in degrees, x) leaves y unchanged."""
    x, w, b, ind, outd = _problem(8, 36, 40, torch.float32, device, gen, "random")
    y = ops.masked_linear(x, w, b, ind, outd, activation="relu", backend=backend)
    pr = torch.randperm(36, generator=gen).to(device)
    pc = ref.degree_sort_permutation(ind.cpu()).to(device)
    y2 = ops.masked_linear(x[:, pc], w[pr][:, pc], b[pr], ind[pc], outd[pr], activation="relu", backend=backend)
    torch.testing.assert_close(y2, y[:, pr], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_tile_plan_classifies_every_tile(device, backend, gen):
    """made_plan's lists equal a brute-force classification of the mask's tiles, for both passes
    and both mask kinds; every K-tile appears once in exactly one of full / partial / skipped."""
    from pygen.kernels import made as kern

    br, bk = 32, 16
    for strict in (False, True):
        ind = _degrees(75, 10, gen, "random").to(device)
        outd = _degrees(70, 10, gen, "sorted").to(device)
        mask = ref.autoregressive_mask(ind, outd, strict)  # [N, K]
        for rows_are_out, r_deg, k_deg, mtx in ((True, outd, ind, mask), (False, ind, outd, mask.t())):
            t, j = -(-r_deg.numel() // br), -(-k_deg.numel() // bk)
            plan = torch.full((t, j), -1, dtype=torch.int32, device=device)
            counts = torch.empty((t, 2), dtype=torch.int32, device=device)
            kern.made_plan(r_deg, k_deg, plan, counts, strict, rows_are_out, br, bk)
            for ti in range(t):
                nf, npart = counts[ti].tolist()
                full = set(plan[ti, :nf].tolist())
                part = set(plan[ti, j - npart :].tolist()) if npart else set()
                for jj in range(j):
                    blk = mtx[ti * br : (ti + 1) * br, jj * bk : (jj + 1) * bk]
                    want = "full" if blk.all() else ("zero" if not blk.any() else "partial")
                    got = "full" if jj in full else ("partial" if jj in part else "zero")
                    assert got == want, (strict, rows_are_out, ti, jj, got, want)


@pytest.mark.parametrize("device,backend", PARAMS)
def test_size_zero_and_one(device, backend, gen):
    for m, n, k in ((0, 5, 4), (3, 0, 4), (3, 5, 0), (1, 1, 1)):
        x, w, b, ind, outd = _problem(m, n, k, torch.float32, device, gen)
        g = torch.randn(m, n, generator=gen).to(device)
        fn = lambda x_, w_, b_: ops.masked_linear(x_, w_, b_, ind, outd, False, "gelu", backend=backend)
        fr = lambda x_, w_, b_: ref.masked_linear(x_, w_, b_, ind, outd, False, "gelu")
        y, grads = _fwd_bwd(fn, x, w, b, g)
        _check(y, grads, x, w, b, g, fr, f"size {m}x{n}x{k}")


@pytest.mark.parametrize("device,backend", PARAMS)
def test_strided_bias_nan_and_empty_bits(device, backend, gen):
    """Inputs the kernels read wrongly before a review: a strided or expanded bias (the Triton
    kernels read it at unit stride: wrong values, and past the storage for a stride-0 one), a NaN
    through the fused relu and elu (the Triton kernels returned 0, torch keeps NaN), and bit-packed
    inputs with a 0 batch dimension (pack_bits and the reference raised a reshape error)."""
    m, n, k = 7, 20, 36
    x, w, _, ind, outd = _problem(m, n, k, torch.float32, device, gen)
    full = torch.randn(2 * n, generator=gen).to(device)
    for b in (full[::2], full[:1].expand(n)):
        want = ref.masked_linear(x.double(), w.double(), b.double(), ind, outd, False, "tanh")
        got = ops.masked_linear(x, w, b, ind, outd, False, "tanh", backend=backend)
        assert_close_to_ref(got, want, what=f"bias stride {b.stride()}")
        xb = ops.pack_bits(x > 0)
        got = ops.masked_linear_bits(xb, k, w, b, ind, outd, False, "tanh", backend=backend)
        want = ref.masked_linear((x > 0).double(), w.double(), b.double(), ind, outd, False, "tanh")
        assert_close_to_ref(got, want, what=f"bits bias stride {b.stride()}")
        d = 6
        hd, od = _degrees(k, d, gen, "sorted").to(device), ref.output_degrees(d, 2).to(device)
        w2 = (torch.randn(2 * d, k, generator=gen) / 8).to(device)
        b2 = torch.randn(4 * d, generator=gen).to(device)[::2] if b.stride(0) else b[: 2 * d]
        xa = torch.randn(m, d, generator=gen).to(device)
        z, ld = ops.made_affine_forward(x.relu(), w2, b2, hd, od, xa, backend=backend)
        z64, ld64 = ref.made_affine_forward(x.relu().double(), w2.double(), b2.double(), hd, od, xa.double())
        assert_close_to_ref(z, z64, what="affine bias stride")
        assert_close_to_ref(ld, ld64, atol=1e-4, what="affine bias stride logdet")
    xn = x.clone()
    xn[0] = float("nan")
    for act in ("relu", "elu", "tanh", "gelu"):
        y = ops.masked_linear(xn, w, full[:n], ind, outd, False, act, backend=backend)
        # row 0 is NaN wherever an input reaches it (the reference's W * M also turns the units no
        # input reaches into NaN * 0 = NaN; the kernels skip fully masked tiles: not compared)
        assert y[0].isnan().any() and not y[1:].isnan().any(), act
    for shape in ((0, k), (2, 0, k)):
        empty = torch.zeros(shape, device=device)
        words = ops.pack_bits(empty)
        assert words.shape == (*shape[:-1], 2) and ref.unpack_bits(words, k).shape == shape
        y = ops.masked_linear_bits(words, k, w, full[:n], ind, outd, False, "relu", backend=backend)
        assert y.shape == (*shape[:-1], n)


def test_gradcheck_float64_reference(gen):
    x, w, b, ind, outd = _problem(3, 7, 6, torch.float64, "cpu", gen, "random", d=5)
    for act in ("tanh", "elu", "gelu"):
        for strict in (False, True):
            args = tuple(t.clone().requires_grad_(True) for t in (x, w, b))
            assert torch.autograd.gradcheck(
                lambda x_, w_, b_: ops.masked_linear(x_, w_, b_, ind, outd, strict, act), args
            )
    mask = torch.rand(7, 6, generator=gen) < 0.5
    args = tuple(t.clone().requires_grad_(True) for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x_, w_, b_: ops.masked_linear(x_, w_, b_, mask=mask), args)


def test_reference_is_the_masked_dense_layer(gen):
    """The oracle itself: degrees -> mask as stated, dW is zero wherever the mask is."""
    ind = torch.tensor([1, 2, 3, 1])
    outd = torch.tensor([1, 3, 2])
    assert ref.autoregressive_mask(ind, outd).tolist() == [[1, 0, 0, 1], [1, 1, 1, 1], [1, 1, 0, 1]]
    assert ref.autoregressive_mask(ind, outd, True).tolist() == [[0, 0, 0, 0], [1, 1, 0, 1], [1, 0, 0, 1]]
    x = torch.randn(5, 4, dtype=torch.float64)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ref.masked_linear(x, w, None, ind, outd, True).sum().backward()
    assert (w.grad[~ref.autoregressive_mask(ind, outd, True)] == 0).all()


def test_degrees_from_mask_round_trip(gen):
    for _ in range(20):
        ind = torch.randint(0, 6, (9,), generator=gen)
        outd = torch.randint(0, 6, (7,), generator=gen)
        mask = ref.autoregressive_mask(ind, outd, strict=bool(torch.randint(0, 2, (1,), generator=gen)))
        got = ref.degrees_from_mask(mask)
        assert got is not None and torch.equal(ref.autoregressive_mask(*got), mask)
    assert ref.degrees_from_mask(torch.tensor([[1, 0], [0, 1]])) is None  # rows not nested


@pytest.mark.parametrize("device,backend", PARAMS)
def test_made_affine_head_matches_reference(device, backend, gen):
    """MAF output head (matmul + affine + log-det in one kernel) against float64, forward and
    backward; bf16 forward too."""
    b_, k, d = 13, 45, 24
    ind = _degrees(k, d, gen, "sorted").to(device)
    outd = ref.output_degrees(d, 2).to(device)
    for dt in (torch.float32, torch.bfloat16):
        h = torch.randn(b_, k, generator=gen).relu().to(device=device, dtype=dt)
        w = (torch.randn(2 * d, k, generator=gen) / 8).to(device=device, dtype=dt)
        bias = torch.randn(2 * d, generator=gen).to(device=device, dtype=dt)
        x = torch.randn(b_, d, generator=gen).to(device=device, dtype=dt)
        gz = torch.randn(b_, d, generator=gen).to(device=device, dtype=dt)
        gl = torch.randn(b_, generator=gen).to(device=device, dtype=dt)

        def run(fn, ts):
            leaves = [t.detach().clone().requires_grad_(True) for t in ts]
            z, ld = fn(*leaves)
            return (z, ld), torch.autograd.grad((z * gz.to(z.dtype)).sum() + (ld * gl.to(ld.dtype)).sum(), leaves)

        fn = lambda h_, w_, b2, x_: ops.made_affine_forward(h_, w_, b2, ind, outd, x_, backend=backend)
        fr = lambda h_, w_, b2, x_: ref.made_affine_forward(h_, w_, b2, ind, outd, x_)
        (z, ld), grads = run(fn, (h, w, bias, x))
        (z64, ld64), g64 = run(fr, (h.double(), w.double(), bias.double(), x.double()))
        (zs, lds), gs = run(fr, (h, w, bias, x))
        assert_close_to_ref(z, z64, zs, what=f"affine z {dt}")
        assert_close_to_ref(ld, ld64, lds, atol=4 * ATOL[dt], what=f"affine logdet {dt}")
        if dt == torch.float32:
            for nm, a, r, sm in zip(("dh", "dW", "db", "dx"), grads, g64, gs):
                assert_close_to_ref(a, r, sm, atol=4 * ATOL[dt], what=f"affine {nm}")
        with torch.no_grad():  # the no-grad path does not write the parameters
            z2, ld2 = fn(h, w, bias, x)
        torch.testing.assert_close(z2, z.detach())


@pytest.mark.parametrize("device,backend", PARAMS)
def test_masked_linear_bits_matches_reference(device, backend, gen):
    """Bit-packed binary inputs (K = 70: three words, the last partial) against float64 on the
    unpacked inputs; gradients of weight and bias."""
    m, n, k = 19, 50, 70
    x = (torch.rand(2, m, k, generator=gen) < 0.4).float()
    xb = ops.pack_bits(x).to(device)
    assert xb.dtype == torch.int32 and xb.shape == (2, m, 3)
    assert torch.equal(ref.unpack_bits(xb.cpu(), k), x)
    ind, outd = _degrees(k, 20, gen, "sorted").to(device), _degrees(n, 20, gen, "sorted").to(device)
    for dt, act in ((torch.float32, "tanh"), (torch.bfloat16, "tanh"), (torch.float32, "gelu")):
        w = (torch.randn(n, k, generator=gen) / 8).to(device=device, dtype=dt)
        b = torch.randn(n, generator=gen).to(device=device, dtype=dt)
        g = torch.randn(2, m, n, generator=gen).to(device=device, dtype=dt)
        fn = lambda w_, b_: ops.masked_linear_bits(xb, k, w_, b_, ind, outd, True, act, backend=backend)
        fr = lambda w_, b_: ref.masked_linear(x.to(device=device, dtype=w_.dtype), w_, b_, ind, outd, True, act)
        ws, bs = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
        y = fn(ws, bs)
        grads = torch.autograd.grad(y, (ws, bs), g)
        w64, b64 = w.double().requires_grad_(True), b.double().requires_grad_(True)
        y64 = fr(w64, b64)
        g64 = torch.autograd.grad(y64, (w64, b64), g.double())
        w2, b2 = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
        ysame = fr(w2, b2)
        gsame = torch.autograd.grad(ysame, (w2, b2), g)
        assert_close_to_ref(y, y64, ysame, what=f"bits {dt} {act} y")
        for nm, a, r, sm in zip(("dW", "db"), grads, g64, gsame):
            assert_close_to_ref(a, r, sm, atol=4 * ATOL[dt], what=f"bits {dt} {act} {nm}")


def _opcheck_args(name, dev):
    g = torch.Generator().manual_seed(0)
    if name.startswith("masked_linear_bits"):
        xb = ref.pack_bits(torch.rand(3, 40, generator=g) < 0.5).to(dev)
        w = torch.randn(5, 40, generator=g).to(dev)
        ind, outd = torch.arange(1, 41, device=dev) % 7, torch.tensor([0, 2, 3, 5, 6], device=dev)
        if "backward" in name:
            gy = torch.randn(3, 5, generator=g).to(dev)
            return [
                (gy, torch.relu(torch.randn(3, 5, generator=g)).to(dev), xb, w, ind, outd, False, "relu", True, True)
            ]
        return [
            (xb, w.requires_grad_(), torch.randn(5, generator=g).to(dev).requires_grad_(), ind, outd, True, "elu"),
            (xb, w.detach().requires_grad_(), None, ind, outd, False, "gelu"),
        ]
    if name.startswith("made_affine"):
        h = torch.randn(3, 6, generator=g).to(dev)
        w = torch.randn(8, 6, generator=g).to(dev)
        bias = torch.randn(8, generator=g).to(dev)
        x = torch.randn(3, 4, generator=g).to(dev)
        ind = torch.tensor([1, 1, 2, 3, 3, 4], device=dev)
        outd = ref.output_degrees(4, 2).to(dev)
        return [(h.requires_grad_(), w.requires_grad_(), bias.requires_grad_(), ind, outd, x.requires_grad_(), True)]
    x = torch.randn(3, 5, generator=g).to(dev)
    w = torch.randn(4, 5, generator=g).to(dev)
    b = torch.randn(4, generator=g).to(dev)
    ind = torch.tensor([1, 2, 3, 4, 5], device=dev)
    outd = torch.tensor([1, 2, 2, 4], device=dev)
    mask = (torch.rand(4, 5, generator=g) < 0.5).to(dev)
    if "backward" in name:
        gy = torch.randn(3, 4, generator=g).to(dev)
        y = torch.tanh(x @ w.t())
        return [
            (gy, y, x, w, ind, outd, None, True, "tanh", True, True, True),
            (gy, y, x, w, None, None, mask, False, "relu", True, False, True),
        ]
    return [
        (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), ind, outd, None, False, "gelu"),
        (x, w, None, None, None, mask, False, "none"),
    ]


@pytest.mark.parametrize("name", [n for n in _registry.registered() if n.startswith(("masked_linear", "made_"))])
def test_opcheck(name):
    opcheck_registered(name, _opcheck_args)


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_torch_compile_fullgraph(device, backend, gen):
    torch._dynamo.reset()
    x, w, b, ind, outd = _problem(6, 20, 12, torch.float32, device, gen)
    mask = torch.rand(20, 12, generator=gen).to(device) < 0.5
    w.requires_grad_(True)

    def net(t):
        h = ops.masked_linear(t, w, b, ind, outd, False, "relu", backend=backend)
        return ops.masked_linear(t, w, None, mask=mask, activation="tanh", backend=backend).sum() + h.sum()

    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    got, eager = compiled(x), net(x)
    torch.testing.assert_close(got, eager)
    torch.testing.assert_close(torch.autograd.grad(got, w)[0], torch.autograd.grad(net(x), w)[0])


# ---- bad input --------------------------------------------------------------------------------
def _bad_calls():
    x, w, b = torch.randn(3, 5), torch.randn(4, 5), torch.randn(4)
    ind, outd = torch.arange(1, 6), torch.tensor([1, 2, 3, 4])
    return [
        (lambda: ops.masked_linear(x, w, b, ind.float(), outd), TypeError, "in_degrees must be an integer"),
        (lambda: ops.masked_linear(x, w, b, ind, torch.arange(5)), ValueError, r"out_degrees must have shape \[4\]"),
        (lambda: ops.masked_linear(x, w, b, ind[None], outd), ValueError, "in_degrees must have shape"),
        (lambda: ops.masked_linear(x, w, b, ind == 1, outd), TypeError, "in_degrees must be an integer"),
        (lambda: ops.masked_linear(x, w.t(), b, ind, outd), ValueError, "in_features"),
        (lambda: ops.masked_linear(x, w.double(), b, ind, outd), TypeError, "weight dtype"),
        (lambda: ops.masked_linear(x, w, b[:3], ind, outd), ValueError, "bias must have shape"),
        (lambda: ops.masked_linear(x.long(), w, b, ind, outd), TypeError, "x must be float"),
        (lambda: ops.masked_linear(x, w, b, ind, outd, activation="swish"), ValueError, "activation"),
        (lambda: ops.masked_linear(x, w, b, ind, outd, strict=1), TypeError, "strict must be a bool"),
        (lambda: ops.masked_linear(x, w, b), ValueError, "in_degrees and out_degrees are required"),
        (lambda: ops.masked_linear(x, w, b, ind, outd, mask=torch.ones(4, 5)), ValueError, "either"),
        (lambda: ops.masked_linear(x, w, b, mask=torch.ones(5, 4)), ValueError, "mask must have the weight's shape"),
        (lambda: ops.masked_linear(x, w, b, mask=torch.full((4, 5), 0.5)), ValueError, "only 0 and 1"),
        (
            lambda: ops.masked_linear(x.double(), w.double(), b.double(), ind, outd, backend="triton"),
            TypeError,
            "float64",
        ),
        (lambda: ops.masked_linear(x, w, b, ind, outd, backend="cuda"), ValueError, "not implemented"),
        (lambda: ops.masked_linear_bits(ops.pack_bits(x > 0).long(), 5, w, b, ind, outd), TypeError, "int32 words"),
        (
            lambda: ops.masked_linear_bits(torch.zeros(3, 2, dtype=torch.int32), 5, w, b, ind, outd),
            ValueError,
            r"ceil\(5 / 32\) = 1 words",
        ),
        (lambda: ops.masked_linear_bits(ops.pack_bits(x > 0), 6, w, b, ind, outd), ValueError, "features = 6"),
    ]


@pytest.mark.parametrize("i", range(len(_bad_calls())))
def test_bad_input_raises_named_errors(i):
    call, exc, match = _bad_calls()[i]
    with pytest.raises(exc, match=match):
        call()
