"""FP8 family benchmarks: the DeepSeek-V3 GEMMs in the block-scaled FP8 recipe.

Default shapes (``cases(quick=False)``)
---------------------------------------
Dense N x K (DeepSeek-V3 671B linear layers, the shapes DeepGEMM's README reports):
    7168 x 2048, 2112 x 7168, 24576 x 1536, 7168 x 16384, 4096 x 7168, 2048 x 7168
at M = 64 and 128 (decode batches) and 4096 (prefill / training), and the grouped MoE GEMM:
256 experts x 128 rows each (4096 tokens x 8 routed experts / 256), expert gate+up N x K =
4096 x 7168 (moe_intermediate 2048, doubled for gate and up). On a CPU only the reference runs
(pure PyTorch, the float32 per-K-block recipe), so the CPU cases keep M = 64 and two of the
shapes, and the grouped case 8 experts (the same per-expert work).

Cases
-----
fp8_gemm          out = fp8_gemm(A, sa, B, sb) on operands quantised beforehand (the GEMM alone).
                  Backward modes time the input-gradient path of a frozen-weight linear layer:
                  quantise dY (1x128) and dX = fp8_gemm(dY, W^T) with the pre-transposed
                  quantised weight (the harness needs a differentiable output; the fp8
                  operands themselves have no gradient).
fp8_gemm_grouped  the contiguous-layout MoE GEMM; backward: the grouped dgrad the same way.
quantize_1x128    the activation quantisation kernel at [M, K] (fwd only; bwd = identity).
fp8_linear        pygen.nn.fp8.fp8_linear on high-precision x, W (training semantics: x and W
                  quantised every call; fwd+bwd adds dgrad, the 1x128 x 1x128 wgrad GEMM and
                  the transposed quantisations).
Baselines: ``torch.matmul`` (x @ W^T in the benchmark dtype: bf16 on GPU), ``torch._scaled_mm``
with (BlockWise1x128, BlockWise128x128) scaling where this torch and device support it (the
factory probes it and the row is skipped with torch's message otherwise). ``torch.matmul`` and
the grouped "matmul loop (dequantised W)" are the unquantised layer that FP8 replaces: they are
declared ``approximate`` (timed, marked (!)), since they differ from the FP8 result by its
quantisation error by design.

compile(reference) compiles the same work as the pygen path, backward included: for fp8_linear
the straight-through recipe (pygen.nn.fp8.fp8_linear with backend="reference"), for the
quantisation case a quantise-dequantise with the identity gradient (_QDQ). Compiling the bare
forward recipe instead (quantise -> fp8_gemm_recipe) lets autograd differentiate *through* the
quantiser, and the derivative of ``Tensor.to(torch.float8_e4m3fn)`` casts the incoming gradient
to e4m3 with no scale: gradients below e4m3's smallest subnormal (2^-9) flush to zero, the rest
keep 3 mantissa bits, and the 1/s of the quantiser then multiplies that error by ~10^3-10^4 --
the dW of that baseline was off by 164 (on values of ~50) at the quick shape. It was timed as if
it did the same work; the harness now refuses to time a baseline that fails the check.

Byte and FLOP model (E = bytes of the output dtype)
---------------------------------------------------
fp8_gemm fwd      M*K + N*K (fp8) + 4*(M*K/128 + ceil(N/128)*K/128) (scales) + M*N*E;
                  FLOPs 2*M*N*K.    bwd (dgrad): M*N*E (dY) + M*N (dY fp8) + N*K + M*K*E; 2*M*N*K
grouped           the same with M = all rows and N*K per expert times E experts
quantize_1x128    M*K*E (read) + M*K (fp8) + 4*M*K/128 (scales)
fp8_linear        fwd: M*K*E + N*K*E (x, W read for quantisation) + fp8 copies written and read
                  + M*N*E; FLOPs 2MNK fwd, 6MNK fwd+bwd
``python -m pygen.bench.fp8 [--quick] [--device cpu|cuda]`` runs these cases through the shared
harness and adds TFLOP/s, the fraction of the H200's 1979 TFLOP/s dense FP8 peak, the
memory and compute floors and the relative error of the FP8 result against the unquantised
product (x @ W^T in bf16, float32 accumulation), appending JSON lines to
<results>/<device>/fp8.jsonl, <results> being pygen bench's default folder outside the source tree
(pygen.tools.harness.results_dir: $PYGEN_RESULTS_DIR, else ~/.cache/pygen/bench).
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from pygen.ops import fp8 as ops
from pygen.ref import fp8 as ref
from pygen.tools.harness import Case, Inputs

FAMILY = "fp8"
BACKENDS = ("triton",)
UNQUANTISED = (
    "unquantised x @ W^T in the benchmark dtype, the layer FP8 replaces: differs by the FP8 quantisation error"
)
FP8_PEAK_TFLOPS = 1979.0  # H200 SXM dense FP8 (NVIDIA datasheet; 3958 with sparsity)
HBM_TBPS = 4.8  # H200 SXM HBM3e

DENSE_NK = ((7168, 2048), (2112, 7168), (24576, 1536), (7168, 16384), (4096, 7168), (2048, 7168))
DEFAULT = {
    "dense_nk": DENSE_NK,
    "ms": (64, 128, 4096),
    "experts": 256,
    "rows_per_expert": 128,
    "expert_nk": (4096, 7168),
    "quant_mk": ((4096, 7168),),
}
CPU = {
    "dense_nk": ((2112, 7168), (7168, 2048)),
    "ms": (64,),
    "experts": 8,
    "rows_per_expert": 128,
    "expert_nk": (4096, 7168),
    "quant_mk": ((512, 7168),),
}
QUICK = {
    "dense_nk": ((256, 384),),
    "ms": (7, 128),
    "experts": 2,
    "rows_per_expert": 128,
    "expert_nk": (256, 256),
    "quant_mk": ((64, 512),),
}


def _randn(shape, seed, device, dtype, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(device=device, dtype=dtype)


def _out_dtype(dtype):
    return dtype if dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.float32


class _QDQ(torch.autograd.Function):
    """dequantize(quantize_1x128(x)) with the identity (straight-through) gradient: what the
    quantisation case's pygen path computes, as a pure-PyTorch function torch.compile can take."""

    @staticmethod
    def forward(ctx, x):
        ctx.in_dtype = x.dtype
        return ref.dequantize(*ref.quantize_1x128(x))

    @staticmethod
    def backward(ctx, g):
        return g.to(ctx.in_dtype)


def _linear_reference(x, w):
    """The fp8_linear recipe (pygen.nn.fp8: quantised forward, straight-through fp8 backward) on
    the reference ops: the function the compile(reference) baseline compiles."""
    from pygen.nn.fp8 import fp8_linear

    return fp8_linear(x, w, backend="reference")


class _Frozen(torch.autograd.Function):
    """Output ``fwd()`` attached to the high-precision activation leaf ``x``; the backward runs
    ``bwd(grad)`` (the fp8 dgrad path) so the harness can time it."""

    @staticmethod
    def forward(ctx, x, fwd, bwd):
        ctx.bwd = bwd
        return fwd()

    @staticmethod
    def backward(ctx, g):
        return ctx.bwd(g), None, None


def _dgrad(gy, wqt, wst, backend, out_dtype, mi=None):
    # dX = dY W reduces over N: a ragged N (DeepSeek-V3's 2112) is padded with zero columns to the
    # 128-multiple that the 1x128 scales need (wqt was quantised from W padded the same way)
    if gy.shape[1] != wqt.shape[-1]:
        gy = torch.nn.functional.pad(gy, (0, wqt.shape[-1] - gy.shape[1]))
    gq, gs = ops.quantize_fp8_1x128(gy.contiguous(), backend=backend)
    if mi is not None:  # the grouped GEMM: wqt [E, K, N], the rows of expert e where mi says
        return ops.fp8_gemm_grouped(gq, gs, wqt, wst, mi, out_dtype=out_dtype, backend=backend)
    return ops.fp8_gemm(gq, gs, wqt, wst, out_dtype=out_dtype, backend=backend)


# ---- the frozen-weight GEMM cases (dense and grouped) share their inputs, run and byte model ----
def _gemm_inputs(x, n: int, grad_seed: int, **operands) -> Inputs:
    """x [M, K] (the one leaf), the fp8 operands (q, s, wq, ws and the dgrad's pre-transposed
    wqt, wst) and an output gradient [M, N] in the output dtype."""
    grad = _randn((x.shape[0], n), grad_seed, x.device, _out_dtype(x.dtype))
    return Inputs({"x": x, **operands}, [x], grad)


def _gemm_run(grouped: bool):
    """run(I, backend): the fp8 GEMM on the operands quantised beforehand, attached to x so that
    the backward modes time the dgrad (_dgrad) with the pre-transposed quantised weight."""
    gemm = ops.fp8_gemm_grouped if grouped else ops.fp8_gemm

    def run(I, b):
        od = _out_dtype(I.x.dtype)
        mi = (I.mi,) if grouped else ()
        return _Frozen.apply(
            I.x,
            lambda: gemm(I.q, I.s, I.wq, I.ws, *mi, out_dtype=od, backend=b),
            lambda g: _dgrad(g, I.wqt, I.wst, b, I.x.dtype, *mi),
        )

    return run


def _gemm_bytes(m: int, n: int, k: int, experts: int = 1, scale_bytes: int = 0):
    """bytes_model(I, mode), E = bytes of the output dtype: fwd M*K + experts*N*K (fp8 operands)
    + scale_bytes + M*N*E; bwd (dgrad) M*N*E (dY) + M*N (dY in fp8) + experts*N*K + M*K*E."""

    def nbytes(I, mode):
        e = _out_dtype(I.x.dtype).itemsize
        fwd = m * k + experts * n * k + scale_bytes + m * n * e
        bwd = m * n * e + m * n + experts * n * k + m * k * e
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]

    return nbytes


def _scaled_mm_factory():
    """torch._scaled_mm with (BlockWise1x128, BlockWise128x128) scales, if this build runs it."""
    if not torch.cuda.is_available():
        raise RuntimeError("torch._scaled_mm block scaling needs a CUDA device")
    a = torch.zeros(128, 128, device="cuda").to(torch.float8_e4m3fn)
    sa = torch.ones(128, 1, device="cuda").t().contiguous().t()
    sb = torch.ones(1, 1, device="cuda")
    torch._scaled_mm(a, a.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)  # raises if unsupported
    return lambda I: torch._scaled_mm(I.q, I.wq.t(), scale_a=I.s, scale_b=I.ws.t(), out_dtype=torch.bfloat16)


def gemm_case(m: int, n: int, k: int, tag: str) -> Case:
    shape = {"M": m, "N": n, "K": k, "flops": 2 * m * n * k}

    def make(device, dtype) -> Inputs:
        x = _randn((m, k), 1, device, dtype)
        w = _randn((n, k), 2, device, dtype, 0.02)
        q, s = ops.quantize_fp8_1x128(x, transpose_scales=True)  # layout _scaled_mm reads too
        wq, ws = ops.quantize_fp8_128x128(w)
        n_pad = ref.round_up(n, 128)
        wq_p, ws_p = (
            (wq, ws) if n_pad == n else ops.quantize_fp8_128x128(torch.nn.functional.pad(w, (0, 0, 0, n_pad - n)))
        )
        wqt, wst = wq_p.t().contiguous(), ws_p.t()
        return _gemm_inputs(x, n, 3, w=w, q=q, s=s, wq=wq, ws=ws, wqt=wqt, wst=wst)

    return Case(
        FAMILY,
        "fp8_gemm",
        tag,
        shape,
        make,
        _gemm_run(grouped=False),
        (
            lambda q, s, wq, ws: ref.fp8_gemm_recipe(q, s, wq, ws, out_dtype=torch.bfloat16),
            lambda I: (I.q, I.s, I.wq, I.ws),
        ),
        _gemm_bytes(m, n, k, scale_bytes=4 * (m * k // 128 + math.ceil(n / 128) * k // 128)),
        "fwd M*K + N*K + scales + M*N*E; bwd (dgrad) M*N*(E+1) + N*K + M*K*E",
        baselines={"torch.matmul": lambda: lambda I: I.x @ I.w.t(), "torch._scaled_mm": _scaled_mm_factory},
        backends=BACKENDS,
        approximate={"torch.matmul": UNQUANTISED},
    )


def grouped_case(experts: int, rows: int, n: int, k: int, tag: str) -> Case:
    m = experts * rows
    shape = {"E": experts, "rows_per_expert": rows, "M": m, "N": n, "K": k, "flops": 2 * m * n * k}

    def make(device, dtype) -> Inputs:
        mi, _ = ref.grouped_layout([rows] * experts, device=device)
        x = _randn((m, k), 4, device, dtype)
        q, s = ops.quantize_fp8_1x128(x)
        wq = torch.empty((experts, n, k), dtype=torch.float8_e4m3fn, device=device)
        ws = torch.empty((experts, math.ceil(n / 128), k // 128), device=device)
        for e in range(experts):  # one expert at a time: the high-precision stack would be 2-4x larger
            wq[e], ws[e] = ops.quantize_fp8_128x128(_randn((n, k), 100 + e, device, dtype, 0.02))
        wqt, wst = wq.transpose(1, 2).contiguous(), ws.transpose(1, 2)
        return _gemm_inputs(x, n, 5, q=q, s=s, wq=wq, ws=ws, wqt=wqt, wst=wst, mi=mi)

    def bf16_loop():
        def f(I):
            outs = [
                I.x[e * rows : (e + 1) * rows] @ ref.dequantize(I.wq[e], I.ws[e], 128, I.x.dtype).t()
                for e in range(experts)
            ]
            return torch.cat(outs)

        return f

    return Case(
        FAMILY,
        "fp8_gemm_grouped",
        tag,
        shape,
        make,
        _gemm_run(grouped=True),
        (
            lambda q, s, wq, ws, mi: ref.fp8_gemm_grouped(q, s, wq, ws, mi, dtype=torch.float32),
            lambda I: (I.q, I.s, I.wq, I.ws, I.mi),
        ),
        _gemm_bytes(m, n, k, experts),
        "fwd M*K + E*N*K + M*N*E; bwd M*N*(E+1) + E*N*K + M*K*E",
        baselines={"matmul loop (dequantised W)": bf16_loop},
        backends=BACKENDS,
        approximate={
            "matmul loop (dequantised W)": "activations not quantised (x @ dequantised W^T "
            "per expert): differs by x's FP8 quantisation error"
        },
    )


def quant_case(m: int, k: int, tag: str) -> Case:
    shape = {"M": m, "K": k}

    def make(device, dtype) -> Inputs:
        x = _randn((m, k), 6, device, dtype)
        return Inputs({"x": x}, [x], _randn((m, k), 7, device, torch.float32))

    def run(I, b):
        # the harness compares one tensor: the dequantised values carry both q and the scales
        q, s = ops.quantize_fp8_1x128(I.x, backend=b)
        return _Frozen.apply(I.x, lambda: ref.dequantize(q, s), lambda g: g.to(I.x.dtype))

    def nbytes(I, mode):
        e = I.x.element_size()
        fwd = m * k * e + m * k + 4 * m * k // 128
        return {"fwd": fwd, "bwd": 2 * m * k * 4, "fwd+bwd": fwd + 2 * m * k * 4}[mode]

    return Case(
        FAMILY,
        "quantize_fp8_1x128",
        tag,
        shape,
        make,
        run,
        (_QDQ.apply, lambda I: (I.x,)),
        nbytes,
        "M*K*E + M*K + 4*M*K/128 (timed with a dequantisation for the check: "
        "see docs/fp8.md for the kernel-only floor)",
        backends=BACKENDS,
    )


def linear_case(m: int, n: int, k: int, tag: str) -> Case:
    from pygen.nn.fp8 import fp8_linear

    shape = {"M": m, "N": n, "K": k, "flops": 2 * m * n * k}

    def make(device, dtype) -> Inputs:
        x, w = _randn((m, k), 8, device, dtype), _randn((n, k), 9, device, dtype, 0.02)
        return Inputs({"x": x, "w": w}, [x, w], _randn((m, n), 10, device, dtype))

    def nbytes(I, mode):
        e = I.x.element_size()
        fwd = (m * k + n * k) * (e + 2) + m * n * e
        bwd = 2 * m * n * e + (m * k + n * k) * (e + 2) + 2 * (m * n) + n * k * e
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]

    return Case(
        FAMILY,
        "fp8_linear",
        tag,
        shape,
        make,
        lambda I, b: fp8_linear(I.x, I.w, backend=b),
        (_linear_reference, lambda I: (I.x, I.w)),
        nbytes,
        "fwd (M*K + N*K)*(E+2) + M*N*E; bwd adds dgrad + wgrad operands",
        baselines={"torch.matmul": lambda: lambda I: I.x @ I.w.t()},
        backends=BACKENDS,
        approximate={"torch.matmul": UNQUANTISED},
    )


def cases(quick: bool = False, device: str | torch.device | None = None) -> list[Case]:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = QUICK if quick else (DEFAULT if torch.device(device).type == "cuda" else CPU)
    pre = "quick-" if quick else "dsv3-"
    out = [gemm_case(m, n, k, f"{pre}M{m}-{n}x{k}") for (n, k) in shapes["dense_nk"] for m in shapes["ms"]]
    en, ek = shapes["expert_nk"]
    out.append(
        grouped_case(
            shapes["experts"],
            shapes["rows_per_expert"],
            en,
            ek,
            f"{pre}{shapes['experts']}x{shapes['rows_per_expert']}-{en}x{ek}",
        )
    )
    out += [quant_case(m, k, f"{pre}{m}x{k}") for m, k in shapes["quant_mk"]]
    n, k = shapes["dense_nk"][0]
    out.append(linear_case(max(shapes["ms"]), n, k, f"{pre}M{max(shapes['ms'])}-{n}x{k}"))
    return out


# ----------------------------------------------------------------------------------------------
# TFLOP/s, floors and the error against the unquantised product
# ----------------------------------------------------------------------------------------------
def floors(m: int, n: int, k: int) -> dict:
    """Lower bounds on the time of one fp8_gemm on an H200: weight bytes over HBM bandwidth and
    FLOPs over the dense FP8 peak (us)."""
    return {
        "memory_floor_us": (n * k + m * k + m * n * 2) / (HBM_TBPS * 1e12) * 1e6,
        "compute_floor_us": 2 * m * n * k / (FP8_PEAK_TFLOPS * 1e12) * 1e6,
    }


def rel_error_vs_bf16(case: Case, device, dtype=torch.bfloat16, backend=None) -> float | None:
    """||fp8 result - x @ W^T|| / ||x @ W^T|| (bf16 inputs, float32 accumulation)."""
    if case.op not in ("fp8_gemm", "fp8_linear"):
        return None
    I = case.make_inputs(torch.device(device), dtype)
    with torch.no_grad():
        exact = I.x.float() @ I.w.float().t()
        got = case.pygen(I, backend or ("triton" if torch.device(device).type == "cuda" else "reference"))
    return float((got.float() - exact).norm() / exact.norm())


def add_metrics(rows: list[dict], cases_: list[Case], device) -> list[dict]:
    by = {(c.op, c.label): c for c in cases_}
    err = {}
    for r in rows:
        c = by.get((r["op"], r["shape_label"]))
        if c is None or r.get("median_ms") is None:
            continue
        f = c.shape.get("flops")
        if f:
            # GEMMs per call: fwd 1; bwd = dgrad (+ wgrad for fp8_linear)
            per_mode = (
                {"fwd": 1, "bwd": 2, "fwd+bwd": 3} if c.op == "fp8_linear" else {"fwd": 1, "bwd": 1, "fwd+bwd": 2}
            )
            mult = per_mode[r["mode"]]
            r["tflops"] = f * mult / (r["median_ms"] * 1e-3) / 1e12
            r["fp8_peak_fraction"] = r["tflops"] / FP8_PEAK_TFLOPS
        if "N" in c.shape and "M" in c.shape:
            r.update(floors(c.shape["M"], c.shape["N"], c.shape["K"]))
        key = (c.op, c.label)
        if key not in err:
            try:
                err[key] = rel_error_vs_bf16(c, device)
            except Exception as exc:  # noqa: BLE001 (a baseline that fails is reported, not fatal)
                err[key] = f"{type(exc).__name__}: {exc}"[:120]
        r["rel_err_vs_unquantised_bf16"] = err[key]
    return rows


def main(argv=None) -> int:
    from pygen.tools import harness as H

    p = argparse.ArgumentParser(prog="python -m pygen.bench.fp8", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--modes", nargs="*", default=["fwd"])
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    device = H.resolve_device(args.device)
    dtypes = [torch.bfloat16] if device.type == "cuda" else [torch.float32]
    opts = H.BenchOptions(
        device=device, dtypes=dtypes, modes=args.modes, cpu_budget_s=0.2 if args.quick else 1.0, cpu_min_reps=3
    )
    meta = H.env_info(device)
    cs = cases(quick=args.quick, device=device)
    rows = []
    for c in cs:
        rows += add_metrics(H.run_case(c, opts), [c], device)
    for r in rows:
        r.update(meta)
    print(f"fp8 on {meta['device_name']}: torch {meta['torch']}, triton {meta['triton']}")
    print(f"{'op':18} {'shape':28} {'mode':7} {'impl':28} {'ms':>9} {'TFLOP/s':>8} {'%1979':>6} {'rel err':>8}")
    for r in rows:
        if r.get("median_ms") is None:
            continue
        tf = r.get("tflops")
        e = r.get("rel_err_vs_unquantised_bf16")
        print(
            f"{r['op']:18} {r['shape_label']:28} {r['mode']:7} {r['backend']:28} {r['median_ms']:9.3f} "
            f"{tf if tf is not None else float('nan'):8.2f} {100 * r.get('fp8_peak_fraction', float('nan')):6.2f} "
            f"{e if isinstance(e, float) else float('nan'):8.4f}"
        )
    for r in rows:
        if r["status"] in ("skipped", "error", "mismatch"):
            print(f"{r['status']}: {r['op']} {r['shape_label']} {r['backend']} {r['mode']}: {r.get('reason')}")
    timed = [r for r in rows if r.get("median_ms") is not None]
    if timed and not args.no_save:
        path = H.results_dir() / meta["device_tag"] / "fp8.jsonl"
        H.append_jsonl(path, timed)
        print(f"{len(timed)} JSON lines appended to {path}")
    return 1 if any(r["status"] == "mismatch" and r["kind"] == "pygen" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
