"""Benchmark machinery shared by ``pygen bench`` and the pytest-benchmark suite (bench/).

A family module (bench/<family>.py) describes *what* to run as a list of :class:`Case`; this
module decides *how*: which implementations exist on a device, the correctness check done
before any timing, the timers, the achieved-bandwidth arithmetic, the metadata written with
every JSON line, the stdout table, the stderr progress bar and the optional PNG plot.

Implementations of one case (``Impl.name``):

    pygen:<backend>      pygen.ops.<op>(..., backend=<backend>) for cuda / triton / cpu
    reference            pygen.ops.<op>(..., backend="reference")   (eager pure PyTorch)
    compile(reference)   torch.compile of the pygen.ref function
    torchvision          torchvision.ops, when importable

Timing:
    GPU  triton.testing.do_bench medians and 20th/80th percentiles (L2 flushed between calls);
         forward calls under ``CUDA_GRAPH_BELOW_MS`` are re-timed with do_bench_cudagraph so that
         launch overhead does not dominate, when the call can be captured.
    CPU  one warm-up call, then repeated timed calls (time.perf_counter) until at least
         ``min_reps`` samples and ``budget_s`` seconds; median / p20 / p80 of the samples.

Achieved bandwidth: ``GB/s = model_bytes / median_seconds / 1e9``, where ``model_bytes`` comes
from the family's explicit byte formula (stated in bench/<family>.py; it is a model of the
traffic, not a hardware counter). GPU rows also show the fraction of the device's HBM peak
(``HBM_PEAK_GBPS``) and of the copy ceiling measured in the same run.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

# Vendor peak memory bandwidth by device tag, GB/s (H200 SXM: 4.8 TB/s HBM3e, NVIDIA datasheet).
HBM_PEAK_GBPS = {"h200": 4800.0}
# Forward calls faster than this are re-timed under a CUDA graph (launch overhead ~ a few us).
CUDA_GRAPH_BELOW_MS = 0.1
# Correctness: |impl - ref| <= tol * (1 + |ref|) element-wise, ref = the reference at the same dtype.
# Gradients are accumulated over many RoIs, so they get GRAD_TOL_FACTOR times more room.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 1e-2, torch.bfloat16: 3e-2}
GRAD_TOL_FACTOR = 4.0
MODES = ("fwd", "bwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}
TRITON_CPU_SKIP = ("Triton on CPU is the interpreter (TRITON_INTERPRET=1), a test tool far too "
                   "slow to benchmark")


# ----------------------------------------------------------------------------------------------
# What a family module provides
# ----------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """Tensors of one benchmark instance. ``leaves`` are the differentiable inputs (the feature
    maps); ``grad_out`` is the upstream gradient used by the bwd modes."""
    tensors: dict[str, Any]
    leaves: list[torch.Tensor]
    grad_out: torch.Tensor | None = None

    def __getattr__(self, name):  # I.x instead of I.tensors["x"]
        try:
            return self.__dict__["tensors"][name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class Case:
    """One op on one shape.

    pygen(I, backend)     -> output, through the public op
    reference             -> (fn, args(I)): a pure function (pygen.ref) and its positional args;
                             used eagerly for nothing but torch.compile (the eager "reference"
                             row goes through pygen(I, "reference") like a user would)
    baselines             -> name -> factory(); the factory returns fn(I) -> output or raises
                             (ImportError etc.), and the message becomes the skip reason
    bytes_model(I, mode)  -> int, the byte formula stated in ``bytes_formula``
    grad_check            -> "allclose", or "max-pool" (ties in a max may route the gradient to
                             a different but equally valid element; see _check_maxpool_grad)
    backends              -> the pygen kernel backends the op implements (None: all of
                             cuda / triton / cpu); the others are listed as skipped
    modes                 -> the modes the op has (None: all); e.g. ("fwd",) for an op with no
                             backward (paged decode, routing); the others are listed as skipped
    """
    family: str
    op: str
    label: str
    shape: dict[str, Any]
    make_inputs: Callable[[torch.device, torch.dtype], Inputs]
    pygen: Callable[[Inputs, str], torch.Tensor]
    reference: tuple[Callable, Callable[[Inputs], tuple]]
    bytes_model: Callable[[Inputs, str], int]
    bytes_formula: str
    baselines: dict[str, Callable[[], Callable[[Inputs], torch.Tensor]]] = field(default_factory=dict)
    grad_check: str = "allclose"
    backends: tuple[str, ...] | None = None
    modes: tuple[str, ...] | None = None


@dataclass
class Impl:
    name: str
    kind: str                       # "pygen" or "baseline"
    fn: Callable[[Inputs], torch.Tensor] | None
    skip: str | None = None


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    n: int | None
    timer: str


# ----------------------------------------------------------------------------------------------
# Environment and metadata
# ----------------------------------------------------------------------------------------------
def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("pygen bench: --device cuda requested but torch sees no CUDA device")
    return dev


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({cpu_count()} cores)"


def device_tag(device: torch.device) -> str:
    """Folder name under bench/results/: ``cpu-<n>core``, ``h200``, or the GPU name slugged."""
    if device.type == "cpu":
        return f"cpu-{cpu_count()}core"
    name = torch.cuda.get_device_name(device)
    if "H200" in name.upper():
        return "h200"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug.removeprefix("nvidia-") or "cuda"


def _repo_root() -> Path | None:
    root = Path(__file__).resolve().parent.parent
    return root if (root / ".git").exists() else None


def git_sha() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout pygen is imported from, or (None, None) if not a checkout."""
    root = _repo_root()
    if root is None:
        return None, None
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                     "--untracked-files=no"], capture_output=True, text=True,
                                    timeout=10).stdout.strip())
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def load_average() -> float | None:
    """1-minute load average of the host (other processes disturb CPU timings), or None."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def triton_version() -> str | None:
    try:
        import triton
        return triton.__version__
    except Exception:
        return None


def env_info(device: torch.device) -> dict[str, Any]:
    """The metadata written with every JSON line."""
    import pygen
    sha, dirty = git_sha()
    return {
        "device": device.type,
        "device_tag": device_tag(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version(),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "pygen": pygen.__version__,
        "git_sha": sha,
        "git_dirty": dirty,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "loadavg_1m": load_average(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------------------------
# Implementations of a case on a device
# ----------------------------------------------------------------------------------------------
def build_impls(case: Case, device: torch.device, backends: Sequence[str] | None = None,
                baselines: Sequence[str] | None = None) -> list[Impl]:
    """Every implementation of ``case`` for ``device``, unavailable ones with a skip reason.

    ``backends`` restricts the pygen kernel backends (cuda/triton/cpu); ``baselines`` restricts
    the baselines (reference, compile, torchvision). None means all.
    """
    from pygen import _backend
    impls: list[Impl] = []
    for b in ("cuda", "triton", "cpu"):
        if backends is not None and b not in backends:
            continue
        if (b, device.type) in (("cuda", "cpu"), ("cpu", "cuda")):
            continue  # runs on the other device type: not a row at all
        name = f"pygen:{b}"
        if case.backends is not None and b not in case.backends:
            impls.append(Impl(name, "pygen", None, f"{case.family} has no {b} implementation"))
            continue
        ok, why = _backend.backend_status(b, device)
        if b == "triton" and device.type == "cpu":
            ok, why = False, TRITON_CPU_SKIP
        if not ok:
            impls.append(Impl(name, "pygen", None, why))
            continue
        impls.append(Impl(name, "pygen", (lambda I, _b=b: case.pygen(I, _b))))

    want = (lambda n: baselines is None or n in baselines)
    if want("reference"):
        impls.append(Impl("reference", "baseline", lambda I: case.pygen(I, "reference")))
    if want("compile"):
        fn, args = case.reference
        try:
            compiled = torch.compile(fn)
            impls.append(Impl("compile(reference)", "baseline", lambda I: compiled(*args(I))))
        except Exception as exc:  # torch.compile unsupported on this platform
            impls.append(Impl("compile(reference)", "baseline", None, f"torch.compile: {exc}"))
    for name, factory in case.baselines.items():
        if not want(name):
            continue
        try:
            impls.append(Impl(name, "baseline", factory()))
        except Exception as exc:
            impls.append(Impl(name, "baseline", None, short_error(exc)))
    return impls


# ----------------------------------------------------------------------------------------------
# Running one implementation in one mode
# ----------------------------------------------------------------------------------------------
def short_error(exc: BaseException) -> str:
    """``Type: message`` on one line, without the C++ source locations torch/torchvision prepend."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    msg = re.sub(r"^\S*\(\)?,? ?/\S+:\d+,? ?", "", msg)
    return f"{type(exc).__name__}: {msg}"[:200]


def _set_requires_grad(inputs: Inputs, flag: bool) -> None:
    for t in inputs.leaves:
        t.requires_grad_(flag)
        t.grad = None


def _grads(inputs: Inputs) -> list[torch.Tensor]:
    return [t.grad if t.grad is not None else torch.zeros_like(t) for t in inputs.leaves]


class NoBackward(RuntimeError):
    """A baseline whose output carries no autograd graph: its bwd modes are skipped, not errors."""


def run_once(impl: Impl, inputs: Inputs, mode: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and (for bwd modes) the input gradients of one call."""
    if mode == "fwd":
        _set_requires_grad(inputs, False)
        with torch.no_grad():
            return impl.fn(inputs), []
    _set_requires_grad(inputs, True)
    out = impl.fn(inputs)
    if not out.requires_grad:
        _set_requires_grad(inputs, False)
        raise NoBackward(f"{impl.name} has no backward here (its output does not depend on the "
                         f"differentiable inputs, e.g. a reference over pre-quantised tensors)")
    out.backward(inputs.grad_out)
    grads = [g.detach().clone() for g in _grads(inputs)]
    _set_requires_grad(inputs, False)
    return out.detach(), grads


def timed_callable(impl: Impl, inputs: Inputs, mode: str) -> tuple[Callable[[], Any], Callable[[], None]]:
    """(fn, reset): fn is what gets timed, reset runs between samples outside the timed region."""
    if mode == "fwd":
        _set_requires_grad(inputs, False)

        def fwd():
            with torch.no_grad():
                return impl.fn(inputs)
        return fwd, (lambda: None)
    _set_requires_grad(inputs, True)

    def reset():
        for t in inputs.leaves:
            t.grad = None
    if mode == "fwd+bwd":
        def fwd_bwd():
            impl.fn(inputs).backward(inputs.grad_out)
        return fwd_bwd, reset
    out = impl.fn(inputs)  # bwd: one forward, the backward timed alone

    def bwd():
        out.backward(inputs.grad_out, retain_graph=True)
    return bwd, reset


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return float((a.double() - b.double()).abs().max())


def _close(a: torch.Tensor, ref: torch.Tensor, tol: float) -> bool:
    if a.shape != ref.shape:
        return False
    if a.numel() == 0:
        return True
    a, ref = a.double(), ref.double()
    return bool(((a - ref).abs() <= tol * (1.0 + ref.abs())).all())


def _check_maxpool_grad(inputs: Inputs, ref_out: torch.Tensor, grads: list[torch.Tensor],
                        tol: float) -> bool:
    """Tie-robust check of a max-pool gradient. With ties an implementation may route a bin's
    gradient to any element holding the max, so compare the two sums every valid routing keeps:
    sum(grad_in * x) = sum(grad_out * out) and sum(grad_in) = sum(grad_out over non-empty bins)
    (a bin is taken as empty where the reference output is exactly 0)."""
    g_out = inputs.grad_out.double()
    out = ref_out.double()
    x = [t.detach().double() for t in inputs.leaves]
    lhs1 = sum(float(g.double().sum()) for g in grads)
    rhs1 = float((g_out * (out != 0)).sum())
    lhs2 = sum(float((g.double() * xi).sum()) for g, xi in zip(grads, x))
    rhs2 = float((g_out * out).sum())
    mass = float(g_out.abs().sum()) + 1.0
    top = float(out.abs().max()) if out.numel() else 0.0
    return abs(lhs1 - rhs1) <= tol * mass and abs(lhs2 - rhs2) <= tol * mass * (1.0 + top)


def check(case: Case, impl: Impl, inputs: Inputs, mode: str, expected) -> tuple[bool, float]:
    """Compare ``impl`` with the reference result ``expected`` = (out, grads) at the same dtype.
    Returns (ok, max abs error)."""
    out, grads = run_once(impl, inputs, mode)
    ref_out, ref_grads = expected
    tol = TOLERANCE.get(out.dtype, 1e-2)
    err = _max_err(out, ref_out) if out.shape == ref_out.shape else math.inf
    ok = _close(out, ref_out, tol)
    if mode != "fwd":
        gtol = tol * GRAD_TOL_FACTOR
        gerr = max((_max_err(g, r) for g, r in zip(grads, ref_grads)), default=0.0)
        gok = all(_close(g, r, gtol) for g, r in zip(grads, ref_grads))
        if not gok and case.grad_check == "max-pool":
            gok = _check_maxpool_grad(inputs, ref_out, grads, gtol)
        err, ok = max(err, gerr), ok and gok
    return ok, err


# ----------------------------------------------------------------------------------------------
# Timers
# ----------------------------------------------------------------------------------------------
def _quantiles(samples_ms: list[float]) -> tuple[float, float, float]:
    import numpy as np
    a = np.asarray(samples_ms, dtype=float)
    return float(np.median(a)), float(np.percentile(a, 20)), float(np.percentile(a, 80))


def time_cpu(fn: Callable[[], Any], reset: Callable[[], None] = lambda: None, *, warmup: int = 1,
             min_reps: int = 5, max_reps: int = 200, budget_s: float = 1.0,
             max_total_s: float = 30.0) -> Timing:
    """Median / p20 / p80 of repeated calls: at least ``min_reps`` samples and ``budget_s``
    seconds, except that calls so slow that ``max_total_s`` is reached stop early (with at least
    one sample; the sample count is reported with the numbers)."""
    for _ in range(warmup):
        reset()
        fn()
    samples: list[float] = []
    t_start = time.perf_counter()
    while len(samples) < max_reps:
        elapsed = time.perf_counter() - t_start
        if samples and ((len(samples) >= min_reps and elapsed >= budget_s) or elapsed >= max_total_s):
            break
        reset()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    med, p20, p80 = _quantiles(samples)
    return Timing(med, p20, p80, len(samples), "perf_counter")


def time_cuda(fn: Callable[[], Any], grad_to_none: Sequence[torch.Tensor] | None = None, *,
              allow_cudagraph: bool = True, rep_ms: int = 100) -> Timing:
    import triton.testing as tt
    q = [0.5, 0.2, 0.8]
    med, p20, p80 = tt.do_bench(fn, warmup=25, rep=rep_ms, grad_to_none=grad_to_none, quantiles=q)
    timing = Timing(med, p20, p80, None, "do_bench")
    if allow_cudagraph and med < CUDA_GRAPH_BELOW_MS and not grad_to_none:
        try:
            med, p20, p80 = tt.do_bench_cudagraph(fn, rep=rep_ms, quantiles=q)
            timing = Timing(med, p20, p80, None, "do_bench_cudagraph")
        except Exception:  # not capturable (host sync in the call): keep the do_bench numbers
            torch.cuda.synchronize()
    return timing


def measure_copy_gbps(device: torch.device, nbytes: int = 1 << 30) -> float | None:
    """Achieved bandwidth of a plain device-to-device copy (read + write counted), GB/s: the
    practical ceiling the GB/s column is compared with. None on failure."""
    try:
        n = nbytes // 4 if device.type == "cuda" else nbytes // 16
        src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
        dst = torch.empty_like(src)
        if device.type == "cuda":
            t = time_cuda(lambda: dst.copy_(src), allow_cudagraph=False)
        else:
            t = time_cpu(lambda: dst.copy_(src), min_reps=5, budget_s=0.3)
        return 2 * src.numel() * src.element_size() / (t.median_ms * 1e-3) / 1e9
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------
# One case end to end
# ----------------------------------------------------------------------------------------------
@dataclass
class BenchOptions:
    device: torch.device
    dtypes: Sequence[torch.dtype]
    modes: Sequence[str]
    backends: Sequence[str] | None = None
    baselines: Sequence[str] | None = None
    cpu_budget_s: float = 1.0
    cpu_min_reps: int = 5
    cpu_max_total_s: float = 30.0
    allow_cudagraph: bool = True
    deadline: float | None = None   # time.monotonic() after which nothing new is started


def _timing(fn, reset, leaves, opts: BenchOptions) -> Timing:
    if opts.device.type == "cuda":
        grad_to_none = [t for t in leaves if t.requires_grad] or None

        def call():
            fn()
        return time_cuda(call, grad_to_none, allow_cudagraph=opts.allow_cudagraph)
    # no extra warm-up: the correctness check (or, for the reference, the oracle run) just ran
    # the same call at the same shapes
    return time_cpu(fn, reset, warmup=0, min_reps=opts.cpu_min_reps, budget_s=opts.cpu_budget_s,
                    max_total_s=opts.cpu_max_total_s)


def reference_impl(case: Case) -> Impl:
    """The oracle: the eager reference through the public op, at the benchmark dtype."""
    return Impl("reference", "baseline", lambda I: case.pygen(I, "reference"))


def run_case(case: Case, opts: BenchOptions, progress: "Progress | None" = None,
             log: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """Check then time every implementation of ``case`` for every dtype and mode.

    Returns one dict per (impl, dtype, mode): status "ok" (timed), "mismatch" (a pygen backend
    disagreed with the reference and was not timed; a baseline is timed anyway and flagged),
    "error" (it raised) or "skipped" (unavailable, with the reason).
    """
    rows: list[dict[str, Any]] = []
    impls = build_impls(case, opts.device, opts.backends, opts.baselines)
    ref_impl = reference_impl(case)
    for dtype in opts.dtypes:
        if opts.deadline is not None and time.monotonic() > opts.deadline:
            for impl in impls:
                for mode in opts.modes:
                    rows.append({"family": case.family, "op": case.op, "shape_label": case.label,
                                 "shape": case.shape, "dtype": str(dtype).removeprefix("torch."),
                                 "mode": mode, "backend": impl.name, "kind": impl.kind,
                                 "status": "skipped", "reason": "time budget (--max-time) exhausted"})
                    if progress:
                        progress.step(f"{case.op} {case.label} (out of time)")
            continue
        inputs = case.make_inputs(opts.device, dtype)
        expected, ref_errors = {}, {}
        for m in opts.modes:
            if case.modes is not None and m not in case.modes:
                continue
            try:
                expected[m] = run_once(ref_impl, inputs, m)
            except Exception as exc:   # reported per row below; one broken case must not end the run
                ref_errors[m] = f"the reference failed: {short_error(exc)}"
        for impl in impls:
            for mode in opts.modes:
                base = {"family": case.family, "op": case.op, "shape_label": case.label,
                        "shape": case.shape, "dtype": str(dtype).removeprefix("torch."),
                        "mode": mode, "backend": impl.name, "kind": impl.kind}
                if progress:
                    progress.step(f"{case.op} {case.label} {base['dtype']} {mode} {impl.name}")
                if mode in ref_errors:
                    rows.append({**base, "status": "error", "reason": ref_errors[mode]})
                    continue
                if mode not in expected:
                    rows.append({**base, "status": "skipped", "reason": f"{case.op} has no {mode} (forward-only)"})
                    continue
                if opts.deadline is not None and time.monotonic() > opts.deadline:
                    rows.append({**base, "status": "skipped", "reason": "time budget (--max-time) exhausted"})
                    continue
                if impl.fn is None:
                    rows.append({**base, "status": "skipped", "reason": impl.skip})
                    continue
                try:
                    if impl.name == "reference":  # the oracle itself
                        ok, err = True, 0.0
                    else:
                        ok, err = check(case, impl, inputs, mode, expected[mode])
                except NoBackward as exc:
                    rows.append({**base, "status": "skipped", "reason": str(exc)})
                    continue
                except Exception as exc:
                    rows.append({**base, "status": "error", "reason": short_error(exc)})
                    if impl.kind == "pygen":  # baseline errors are shown in the table only
                        log(f"{case.op} {mode} {base['dtype']} {impl.name}: {short_error(exc)}")
                    continue
                if not ok and impl.kind == "pygen":
                    rows.append({**base, "status": "mismatch", "max_abs_err": err,
                                 "reason": "output differs from the reference; not timed"})
                    log(f"MISMATCH {case.op} {mode} {base['dtype']} {impl.name}: max abs err {err:.3g}")
                    continue
                try:
                    fn, reset = timed_callable(impl, inputs, mode)
                    t = _timing(fn, reset, inputs.leaves, opts)
                except Exception as exc:
                    rows.append({**base, "status": "error", "reason": short_error(exc)})
                    if impl.kind == "pygen":  # baseline errors are shown in the table only
                        log(f"{case.op} {mode} {base['dtype']} {impl.name}: {short_error(exc)}")
                    continue
                finally:
                    _set_requires_grad(inputs, False)
                nbytes = int(case.bytes_model(inputs, mode))
                row = {**base, "status": "ok" if ok else "mismatch", "correct": ok,
                       "max_abs_err": err, "median_ms": t.median_ms, "p20_ms": t.p20_ms,
                       "p80_ms": t.p80_ms, "samples": t.n, "timer": t.timer, "bytes": nbytes,
                       "bytes_model": case.bytes_formula,
                       "gbps": nbytes / (t.median_ms * 1e-3) / 1e9 if t.median_ms > 0 else None}
                if not ok:
                    row["reason"] = "baseline output differs from the reference (timed anyway)"
                    log(f"baseline {impl.name} differs from the reference on {case.op} {mode} "
                        f"{base['dtype']}: max abs err {err:.3g}")
                rows.append(row)
        del inputs, expected
    return rows


def count_steps(cases: Sequence[Case], opts: BenchOptions) -> int:
    per_case = 0
    for c in cases:
        per_case += len(build_impls(c, opts.device, opts.backends, opts.baselines))
    return per_case * len(opts.dtypes) * len(opts.modes)


# ----------------------------------------------------------------------------------------------
# Output: progress bar, table, JSON lines, plot
# ----------------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, stream=None, width: int = 24):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        line = f"[{bar}] {self.done}/{self.total} {time.perf_counter() - self.t0:6.1f}s {what}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line[:160])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


BASELINE_ORDER = ("torchvision", "reference", "compile(reference)")


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: Sequence[dict[str, Any]], copy_gbps: float | None = None,
                 peak_gbps: float | None = None) -> str:
    """Rows grouped by (op, shape, dtype, mode); ratio columns are baseline_ms / impl_ms measured
    in the same run (> 1: faster than that baseline)."""
    present = [b for b in BASELINE_ORDER if any(r["backend"] == b and r.get("median_ms") for r in rows)]
    head = ["op", "shape", "dtype", "mode", "impl", "median ms", "p20", "p80", "GB/s"]
    if peak_gbps:
        head.append("%peak")
    if copy_gbps:
        head.append("%copy")
    head += [f"x {b}" for b in present]
    body: list[list[str]] = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["shape_label"], r["dtype"], r["mode"]), []).append(r)
    for (op, label, dtype, mode), rs in groups.items():
        base_ms = {r["backend"]: r["median_ms"] for r in rs if r.get("median_ms")}
        for r in rs:
            ms = r.get("median_ms")
            if ms is None:
                line = [op, label, dtype, mode, r["backend"], r["status"].upper(), "", "", ""]
                line += [""] * (len(head) - len(line))
                line[-1] = (line[-1] + " " + str(r.get("reason", ""))[:110]).strip()
                body.append(line)
                continue
            line = [op, label, dtype, mode, r["backend"] + ("" if r.get("correct", True) else " (!)"),
                    f"{ms:.4g}", f"{r['p20_ms']:.4g}", f"{r['p80_ms']:.4g}", _fmt(r.get("gbps"), ".3g")]
            if peak_gbps:
                line.append(_fmt(r["gbps"] / peak_gbps * 100 if r.get("gbps") else None, ".1f"))
            if copy_gbps:
                line.append(_fmt(r["gbps"] / copy_gbps * 100 if r.get("gbps") else None, ".1f"))
            line += [_fmt(base_ms[b] / ms if b in base_ms else None, ".2f") for b in present]
            body.append(line)
    widths = [max(len(str(x[i])) for x in [head] + [b[:len(head)] for b in body]) for i in range(len(head))]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
           "  ".join("-" * w for w in widths)]
    for b in body:
        cells = b[:len(head)]
        if cells[5] in ("SKIPPED", "ERROR", "MISMATCH"):
            out.append("  ".join(str(c).ljust(w) for c, w in zip(cells[:6], widths[:6]))
                       + "  " + " ".join(str(c) for c in cells[6:] if c))
        else:
            out.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(out)


def results_dir() -> Path:
    """bench/results of the source checkout (pygen.bench/results when installed as a package)."""
    return _bench_package_dir() / "results"


def _bench_package_dir() -> Path:
    mod = load_bench_package()
    return Path(mod.__file__).resolve().parent


def load_bench_package():
    """The benchmark definitions: ``pygen.bench`` when installed (package_dir mapping in setup.py),
    else the ``bench/`` folder next to the pygen package in a source checkout, loaded under the
    same name (without putting the checkout root on sys.path, where ``kernels/`` would shadow the
    PyPI ``kernels`` distribution)."""
    import importlib
    import importlib.util
    try:
        return importlib.import_module("pygen.bench")
    except ModuleNotFoundError:
        pass
    folder = Path(__file__).resolve().parent.parent / "bench"
    if not (folder / "__init__.py").exists():
        raise ModuleNotFoundError("pygen.bench is not installed and no bench/ folder was found next "
                                  "to the pygen package; reinstall with `pip install -e .`")
    spec = importlib.util.spec_from_file_location("pygen.bench", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pygen.bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def append_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True, default=str) + "\n")


def plot(rows: Sequence[dict[str, Any]], path: Path) -> str:
    """Bar charts of median ms per implementation, one panel per (op, shape, dtype, mode)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"--plot: matplotlib is not importable ({type(exc).__name__}: {exc}); " \
               f"`pip install matplotlib` (or pygen[plot]) to get PNG charts"
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("median_ms"):
            groups.setdefault((r["op"], r["shape_label"], r["dtype"], r["mode"]), []).append(r)
    if not groups:
        return "--plot: nothing was timed, no chart written"
    ncol = min(3, len(groups))
    nrow = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.5 * ncol, 3.6 * nrow), squeeze=False)
    for ax, ((op, label, dtype, mode), rs) in zip(axes.flat, groups.items()):
        names = [r["backend"] for r in rs]
        med = [r["median_ms"] for r in rs]
        lo = [r["median_ms"] - r["p20_ms"] for r in rs]
        hi = [r["p80_ms"] - r["median_ms"] for r in rs]
        colors = ["tab:blue" if r["kind"] == "pygen" else "tab:gray" for r in rs]
        ax.bar(range(len(rs)), med, yerr=[lo, hi], color=colors, capsize=3)
        ax.set_xticks(range(len(rs)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("median ms (p20-p80)")
        ax.set_yscale("log")
        ax.set_title(f"{op} {label} {dtype} {mode}", fontsize=9)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    dev = rows[0].get("device_name", "")
    fig.suptitle(f"pygen bench on {dev}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"


def as_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)
