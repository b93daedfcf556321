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
         launch overhead does not dominate, when the call can be captured (when it cannot, the
         do_bench timing stays and says so: JSON timer "do_bench; CUDA graph capture failed: <why>",
         "(no graph)" after the impl in the table, listed under the legend). Implementations are
         timed one after the other.
    CPU  written for a shared, loaded host (a 2-core VM where other processes take whole
         scheduler time slices of 4 ms and more; medians of one op jumped 46x between runs).
         * Threads: ``pygen bench`` fixes torch's intra-op thread count (``--threads``, default 1
           on CPU: with more threads than free cores an OpenMP region waits for its slowest,
           descheduled thread, which is what put medians on the 4/8/12/16 ms time-slice grid)
           and prints it; pygen's own OpenMP kernels follow torch's count.
         * Interleaving: after the correctness checks of one (case, dtype, mode), the calls of all
           its implementations are interleaved one by one, round by round, the starting
           implementation rotating each round (interleaved_order: A B, B A, A B, ...), until at
           least ``cpu_min_rounds`` (10) rounds and ``cpu_budget_s`` seconds per implementation,
           at most 200 rounds or ``cpu_max_total_s`` per implementation. Round i's calls run
           within milliseconds of each other, so they see the same load: they are a pair.
         * Clock: each call is timed with time.perf_counter (wall) and time.thread_time (CPU
           time of the calling thread); ``reset`` runs outside the timed region. With one torch
           thread the whole call runs on the calling thread, so its CPU time is the call's cost
           without the time slices other processes took in between: that is the clock used
           (row "timer": "thread_time", the wall median kept as "wall_median_ms"), unless the
           process's CPU time over some implementation's calls exceeds the calling thread's by
           more than 10% (work ran on another thread) or more threads are used: then wall time
           ("perf_counter"). One clock for all implementations of a ratio.
         * Per implementation: median, p20, p80 and min of its n calls (ms). Reported as they
           are; the ratio below does not use them.
         * Ratio (speedup of X over baseline B, ratio_stats): the median of the n paired ratios
           r_i = B_i / X_i, with the distribution-free 95% confidence interval of a median from
           order statistics [r_(k), r_(n+1-k)], k the largest rank with P(Bin(n, 1/2) < k) <=
           2.5% (median_ci_ranks; n = 10 gives the 2nd and 9th ratios, 97.9% coverage; n < 6 gives
           none). A time slice lost by one call spoils one pair, not the estimate: up to k - 1
           spoiled pairs on either side leave the interval inside the clean pairs' range.
         * Verdict (verdict): "faster" / "slower" when the interval lies entirely above
           MIN_EFFECT (1.1) / below 1/1.1 -- it excludes 1 and a difference of less than 10%,
           because back-to-back runs on a loaded host shift small ratios by more than their
           intervals (a 0.89 [0.85-0.97] became 1.00 [0.94-1.09] one run later); "~" when it
           does not, but lies inside [1/1.25, 1.25] (no difference over 10% shown, none over
           25% possible); otherwise "noisy": the table prints the interval and no ratio. An
           interval with hi / lo > MAX_CI_WIDTH (3) prints no ratio either ("faster, noisy
           [lo-hi]"): the direction holds, the size does not.
         * Settling: past the budget, rounds go on while some (row, baseline) ratio of the group
           is "noisy" or wider than MAX_CI_WIDTH, up to the time cap (``cpu_max_total_s`` per
           implementation; the rounds are counted in n). Stopping when the intervals settle is
           optional stopping, which costs some coverage; the 95% level is nominal.
         GPU ratios use the same verdict on the interval [B p20 / X p80, B p80 / X p20] of the
         two do_bench timings (unpaired; a spread, not a coverage statement).

Achieved bandwidth: ``GB/s = model_bytes / median_seconds / 1e9``, where ``model_bytes`` comes
from the family's explicit byte formula (stated in bench/<family>.py; it is a model of the
traffic, not a hardware counter). GPU rows also show the fraction of the device's HBM peak
(``HBM_PEAK_GBPS``) and of the copy ceiling measured in the same run (do_bench median; on a
CPU the ceiling is the best of COPY_CPU_REPS copies, labelled so, and no %copy column is shown).

Baselines are checked against the reference like pygen's backends. One whose output differs
computes something else and is not timed (status "mismatch"), unless its case lists it in
``Case.approximate`` (the same layer computed differently by design, e.g. unquantised torch.matmul next to
FP8): then it is timed and marked (!) with the reason.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Vendor peak memory bandwidth by device tag, GB/s (H200 SXM: 4.8 TB/s HBM3e, NVIDIA datasheet).
HBM_PEAK_GBPS = {"h200": 4800.0}
# Forward calls faster than this are re-timed under a CUDA graph (launch overhead ~ a few us).
CUDA_GRAPH_BELOW_MS = 0.1
# A call that cannot be captured keeps its do_bench timing; its row's "timer" says why, and the
# table marks its impl cell and lists it under the legend (never a silent fallback).
GRAPH_FALLBACK = "CUDA graph capture failed"
GRAPH_FALLBACK_MARK = " (no graph)"
# Correctness: |impl - ref| <= tol * (1 + |ref|) element-wise, ref = the reference at the same dtype.
# Gradients are accumulated over many RoIs, so they get GRAD_TOL_FACTOR times more room.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 1e-2, torch.bfloat16: 3e-2}
GRAD_TOL_FACTOR = 4.0
MODES = ("fwd", "bwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
TRITON_CPU_SKIP = "Triton on CPU is the interpreter (TRITON_INTERPRET=1), a test tool far too slow to benchmark"


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
    approximate           -> baseline name -> why its output legitimately differs (the same layer
                             at another precision, e.g. unquantised torch.matmul against FP8): it
                             is timed and marked (!) even where it fails the check. Any other
                             baseline that fails the check computes something else and is
                             reported as a mismatch, not timed
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
    approximate: dict[str, str] = field(default_factory=dict)


@dataclass
class Impl:
    name: str
    kind: str  # "pygen" or "baseline"
    fn: Callable[[Inputs], torch.Tensor] | None
    skip: str | None = None


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    n: int | None
    timer: str
    min_ms: float | None = None
    # the raw per-call samples in call order (CPU timers only): the paired ratio statistics
    # of ratio_stats() need them; None for do_bench, which returns quantiles only
    samples_ms: list[float] | None = field(default=None, repr=False)
    wall_median_ms: float | None = None  # timer "thread_time": the wall-clock median, for reference


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
    root = Path(__file__).resolve().parents[2]
    return root if (root / ".git").exists() else None


def git_sha() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout pygen is imported from, or (None, None) if not a checkout."""
    root = _repo_root()
    if root is None:
        return None, None
    try:
        sha = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
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
def kernel_status(case: Case, backend: str, device: torch.device) -> tuple[bool, str]:
    """(timed, reason) for pygen's ``backend`` kernel of ``case`` on ``device``: the case must
    have that backend, pygen must run it there (for the case's family: _backend.TORCH_CPU_FAMILIES),
    and Triton on a CPU (its interpreter) is never timed."""
    from pygen import _backend

    if case.backends is not None and backend not in case.backends:
        return False, f"{case.op} has no {backend} implementation"
    if backend == "triton" and device.type == "cpu":
        return False, TRITON_CPU_SKIP
    return _backend.backend_status(backend, device, case.family)


def build_impls(
    case: Case, device: torch.device, backends: Sequence[str] | None = None, baselines: Sequence[str] | None = None
) -> list[Impl]:
    """Every implementation of ``case`` for ``device``, unavailable ones with a skip reason.

    ``backends`` restricts the pygen kernel backends (cuda/triton/cpu); ``baselines`` restricts
    the baselines (reference, compile, torchvision). None means all.
    """
    impls: list[Impl] = []
    for b in ("cuda", "triton", "cpu"):
        if backends is not None and b not in backends:
            continue
        if (b, device.type) in (("cuda", "cpu"), ("cpu", "cuda")):
            continue  # runs on the other device type: not a row at all
        name = f"pygen:{b}"
        ok, why = kernel_status(case, b, device)
        if not ok:
            impls.append(Impl(name, "pygen", None, why))
            continue
        impls.append(Impl(name, "pygen", (lambda I, _b=b: case.pygen(I, _b))))

    want = lambda n: baselines is None or n in baselines
    if want("reference"):
        impls.append(Impl("reference", "baseline", lambda I: case.pygen(I, "reference")))
    if want("compile"):
        fn, args = case.reference
        try:
            # cases share reference functions (one code object for every MLA decode case): past
            # dynamo's recompile limit (8) the "compiled" row would run eager, silently. A fresh
            # cache per case keeps each case's compiles (dtypes x modes <= 6) under it.
            torch._dynamo.reset()
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
            if isinstance(exc, ImportError) and (exc.name or "").partition(".")[0] == "pygen":
                raise  # pygen's own import failing is a bug, not a baseline that is absent here
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
        raise NoBackward(
            f"{impl.name} has no backward here (its output does not depend on the "
            f"differentiable inputs, e.g. a reference over pre-quantised tensors)"
        )
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


def _check_maxpool_grad(inputs: Inputs, ref_out: torch.Tensor, grads: list[torch.Tensor], tol: float) -> bool:
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


def _cpu_timing(samples: list[float], timer: str = "perf_counter", wall: list[float] | None = None) -> Timing:
    med, p20, p80 = _quantiles(samples)
    t = Timing(med, p20, p80, len(samples), timer, min(samples), list(samples))
    if wall is not None:
        t.wall_median_ms = _quantiles(wall)[0]
    return t


# CPU clocks. "thread_time": CPU time of the calling thread (time.thread_time, i.e.
# CLOCK_THREAD_CPUTIME_ID): with a single torch thread all the work of a call runs on the calling
# thread, and time spent descheduled while other processes run is not counted, so on a loaded
# host it measures the call, not the queue. "perf_counter": wall time, needed with more threads
# (the workers' time is not the caller's). "auto" takes thread_time when torch runs one thread and,
# for every implementation, the process's CPU time over its calls (time.process_time: all
# threads) exceeds the calling thread's by at most THREAD_TIME_MAX_GAP (nothing of the work ran
# on another thread), else perf_counter.
CPU_TIMERS = ("auto", "thread_time", "perf_counter")
THREAD_TIME_MAX_GAP = 0.10


def time_cpu(
    fn: Callable[[], Any],
    reset: Callable[[], None] = lambda: None,
    *,
    warmup: int = 1,
    min_reps: int = 5,
    max_reps: int = 200,
    budget_s: float = 1.0,
    max_total_s: float = 30.0,
    timer: str = "auto",
) -> Timing:
    """Median / p20 / p80 / min of repeated calls of one callable: at least ``min_reps`` samples
    and ``budget_s`` seconds, except that calls so slow that ``max_total_s`` is reached stop early
    (with at least one sample; the sample count is reported with the numbers). This is
    :func:`time_cpu_interleaved` for one callable; to compare two callables use it directly, so
    that their samples are paired."""
    return time_cpu_interleaved(
        [(fn, reset)],
        warmup=warmup,
        min_rounds=min_reps,
        max_rounds=max_reps,
        budget_s=budget_s,
        max_total_s=max_total_s,
        timer=timer,
    )[0]


def interleaved_order(k: int, rounds: int) -> list[int]:
    """The call order of :func:`time_cpu_interleaved`: round r calls the k implementations once
    each, starting at implementation r mod k (0 1 2, 1 2 0, 2 0 1, ...; for two: A B, B A, A B),
    so every implementation runs at every position of a round equally often and no one of them
    always follows the same neighbour."""
    return [j for r in range(rounds) for j in _round_order(k, r)]


def _round_order(k: int, r: int) -> list[int]:
    return [(r + j) % k for j in range(k)]


def _pick_clock(
    wall: list[list[float]], cpu: list[list[float]], proc: list[float], timer: str
) -> tuple[list[list[float]], str]:
    """proc[j]: process CPU time (ms) summed over implementation j's calls."""
    use_cpu = timer == "thread_time" or (
        timer == "auto"
        and torch.get_num_threads() == 1
        and all(p <= (1 + THREAD_TIME_MAX_GAP) * sum(cs) + 0.01 * len(cs) for p, cs in zip(proc, cpu))
    )
    return (cpu, "thread_time") if use_cpu else (wall, "perf_counter")


def time_cpu_interleaved(
    calls: Sequence[tuple[Callable[[], Any], Callable[[], None]]],
    *,
    warmup: int = 0,
    min_rounds: int = 10,
    max_rounds: int = 200,
    budget_s: float = 1.0,
    max_total_s: float = 30.0,
    timer: str = "auto",
    settled: Callable[[list[list[float]]], bool] | None = None,
) -> list[Timing]:
    """Time k callables ``(fn, reset)`` with their single calls interleaved round by round
    (:func:`interleaved_order`), so that all of them see the same machine load and sample i of
    one is paired with sample i of every other (same round, seconds apart at most).

    Rounds go on until at least ``min_rounds`` rounds and ``budget_s`` seconds (wall time, timed
    calls and resets together) and, if given, ``settled(samples)`` is true (the samples so far,
    per callable, in the clock that would be picked now: run_case asks for every ratio to have a
    verdict), or until ``max_rounds`` rounds or ``max_total_s`` seconds (at least one round).
    ``reset`` runs before each call, outside the timed region. Every call is timed with both
    clocks; ``timer`` (CPU_TIMERS) picks the one the Timings are built from, and ``Timing.timer``
    says which it was (the same for all k, so that their ratios compare like with like)."""
    if timer not in CPU_TIMERS:
        raise ValueError(f"timer must be one of {CPU_TIMERS}, got {timer!r}")
    k = len(calls)
    for _ in range(warmup):
        for fn, reset in calls:
            reset()
            fn()
    wall: list[list[float]] = [[] for _ in range(k)]
    cpu: list[list[float]] = [[] for _ in range(k)]
    proc = [0.0] * k
    perf, thread, process = time.perf_counter, time.thread_time, time.process_time
    t_start = perf()
    rounds = 0
    while rounds < max_rounds:
        elapsed = perf() - t_start
        if rounds and (
            elapsed >= max_total_s
            or (
                rounds >= min_rounds
                and elapsed >= budget_s
                and (settled is None or settled(_pick_clock(wall, cpu, proc, timer)[0]))
            )
        ):
            break
        for j in _round_order(k, rounds):
            fn, reset = calls[j]
            reset()
            p0 = process()
            c0 = thread()
            t0 = perf()
            fn()
            t1 = perf()
            c1 = thread()
            p1 = process()
            wall[j].append((t1 - t0) * 1e3)
            cpu[j].append((c1 - c0) * 1e3)
            proc[j] += (p1 - p0) * 1e3
        rounds += 1
    samples, name = _pick_clock(wall, cpu, proc, timer)
    return [_cpu_timing(ss, name, ws if name == "thread_time" else None) for ss, ws in zip(samples, wall)]


# ----------------------------------------------------------------------------------------------
# Ratio statistics: paired ratios, their confidence interval and the verdict
# ----------------------------------------------------------------------------------------------
CI_LEVEL = 0.95  # nominal coverage of the ratio intervals
MIN_EFFECT = 1.10  # "faster" needs the whole CI above this ("slower": below its inverse)
NEAR_BAND = 1.25  # a CI inside [1/1.25, 1.25] that is neither: "~"
MAX_CI_WIDTH = 3.0  # a CI with hi/lo above this gives no ratio (a verdict, if it excludes 1)


def median_ci_ranks(n: int, level: float = CI_LEVEL) -> tuple[int, int] | None:
    """1-based ranks (k, n + 1 - k) of the distribution-free confidence interval of a median from
    n i.i.d. samples: the largest k with P(Binomial(n, 1/2) <= k - 1) <= (1 - level) / 2, so that
    [x_(k), x_(n+1-k)] covers the median with probability >= level. None when n is too small
    (n < 6 at 95%: even [min, max] covers less)."""
    tail = (1.0 - level) / 2
    k, cdf = 0, 0.0
    for j in range(n + 1):
        cdf += math.comb(n, j) / 2.0**n
        if cdf > tail:
            break
        k = j + 1
    return (k, n + 1 - k) if 1 <= k <= n + 1 - k else None


def verdict(lo: float | None, hi: float | None) -> str:
    """From the CI [lo, hi] of a speedup (baseline time / impl time): "faster" (lo >= MIN_EFFECT),
    "slower" (hi <= 1 / MIN_EFFECT), "~" when neither but the CI lies inside [1/NEAR_BAND,
    NEAR_BAND]; "noisy" otherwise (no CI, or one too wide to tell)."""
    if lo is None or hi is None or not (lo > 0 and math.isfinite(hi)):
        return "noisy"
    if lo >= MIN_EFFECT:
        return "faster"
    if hi <= 1.0 / MIN_EFFECT:
        return "slower"
    if lo >= 1.0 / NEAR_BAND and hi <= NEAR_BAND:
        return "~"
    return "noisy"


def is_wide(stats: dict[str, Any]) -> bool:
    """True when the CI spans more than MAX_CI_WIDTH (or there is none): no ratio is printed."""
    lo, hi = stats.get("lo"), stats.get("hi")
    return lo is None or hi is None or not lo > 0 or hi / lo > MAX_CI_WIDTH


def ratio_stats(impl: Timing, base: Timing, level: float = CI_LEVEL) -> dict[str, Any]:
    """Speedup of ``impl`` over ``base`` (> 1: impl faster) with a confidence interval.

    Paired (both timings carry samples taken interleaved, same count): the ratios
    r_i = base_i / impl_i of the calls of round i; estimate = median of the r_i, CI = the
    order-statistic interval of :func:`median_ci_ranks` (distribution-free; it assumes the
    rounds are independent, not that the times are normal). Unpaired (GPU do_bench quantiles):
    estimate = base median / impl median, interval = [base p20 / impl p80, base p80 / impl p20],
    the range the middle 60% of each timing allows (a spread, not a coverage statement).
    Returns {"ratio", "lo", "hi", "n", "method", "verdict", "wide"} (wide: is_wide)."""
    a, b = impl.samples_ms, base.samples_ms
    if a and b and len(a) == len(b):
        r = sorted(bi / ai for ai, bi in zip(a, b) if ai > 0)
        n = len(r)
        est = statistics.median(r) if r else None
        ranks = median_ci_ranks(n, level)
        lo, hi = (r[ranks[0] - 1], r[ranks[1] - 1]) if ranks else (None, None)
        method = f"paired-median-{round(level * 100)}ci"
    else:
        n = None
        est = base.median_ms / impl.median_ms if impl.median_ms > 0 else None
        lo = base.p20_ms / impl.p80_ms if impl.p80_ms > 0 else None
        hi = base.p80_ms / impl.p20_ms if impl.p20_ms > 0 else None
        method = "p20-p80"
    out = {"ratio": est, "lo": lo, "hi": hi, "n": n, "method": method, "verdict": verdict(lo, hi)}
    out["wide"] = is_wide(out)
    return out


def set_cpu_threads(n: int | None) -> int:
    """Fix torch's intra-op thread count (which pygen's own OpenMP kernels follow too, see
    pygen._ext.call) to ``n`` (None: leave it) and return the count in effect."""
    if n is not None:
        if n < 1:
            raise ValueError(f"thread count must be >= 1, got {n}")
        torch.set_num_threads(n)
    return torch.get_num_threads()


def time_cuda(
    fn: Callable[[], Any],
    grad_to_none: Sequence[torch.Tensor] | None = None,
    *,
    allow_cudagraph: bool = True,
    rep_ms: int = 100,
) -> Timing:
    import triton.testing as tt

    q = [0.5, 0.2, 0.8]
    med, p20, p80 = tt.do_bench(fn, warmup=25, rep=rep_ms, grad_to_none=grad_to_none, quantiles=q)
    timing = Timing(med, p20, p80, None, "do_bench")
    if allow_cudagraph and med < CUDA_GRAPH_BELOW_MS and not grad_to_none:
        try:
            med, p20, p80 = tt.do_bench_cudagraph(fn, rep=rep_ms, quantiles=q)
            timing = Timing(med, p20, p80, None, "do_bench_cudagraph")
        except Exception as exc:  # not capturable (e.g. a host sync in the call): keep the do_bench
            torch.cuda.synchronize()  # numbers, and say so in the row's timer (table: GRAPH_FALLBACK_MARK)
            timing = Timing(med, p20, p80, None, f"do_bench; {GRAPH_FALLBACK}: {short_error(exc)}")
    return timing


COPY_CPU_REPS = 10


def copy_ceiling_label(device: torch.device) -> str:
    """How :func:`measure_copy_gbps` summarises its repetitions on ``device`` (for the printout)."""
    if device.type == "cuda":
        return "do_bench median"
    return f"best of {COPY_CPU_REPS} copies, threads: {torch.get_num_threads()}"


def measure_copy_gbps(device: torch.device, nbytes: int = 1 << 30) -> float | None:
    """Achieved bandwidth of a plain device-to-device copy (read + write counted), GB/s: the
    practical ceiling the GB/s column is compared with. None on failure.

    GPU: from the do_bench median. CPU: from the *fastest* of COPY_CPU_REPS copies (at least;
    more while 0.3 s last): on a shared host a median measures the other processes as much as
    the memory system (medians of 4.2 to 41.7 GB/s were seen in four runs on a loaded 2-core
    VM), while the best copy is the bandwidth the machine demonstrably delivers to this process
    at the fixed thread count. A copy that fits the last-level cache measures the cache, not
    DRAM: the CPU default's 64 MiB fits some server L3s."""
    try:
        n = nbytes // 4  # float32 elements: the tensor is ``nbytes`` (the printout names that size)
        src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
        dst = torch.empty_like(src)
        if device.type == "cuda":
            t = time_cuda(lambda: dst.copy_(src), allow_cudagraph=False)
            ms = t.median_ms
        else:
            t = time_cpu(lambda: dst.copy_(src), min_reps=COPY_CPU_REPS, budget_s=0.3)
            ms = t.min_ms
        return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9
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
    # CPU: interleaved rounds per (case, dtype, mode), at least; 10 pairs give the order-statistic
    # CI [2nd, 9th of 10] of the paired ratios (97.9% coverage), robust to one outlier per side
    cpu_min_rounds: int = 10
    allow_cudagraph: bool = True
    deadline: float | None = None  # time.monotonic() after which nothing new is started


def _time_group(
    pending, inputs: Inputs, mode: str, opts: BenchOptions, rows: list, log, case: Case
) -> list[Timing | None]:
    """Time the checked implementations ``pending`` = [(impl, row base, ok, err)] of one (case,
    dtype, mode). CPU: all of them interleaved call by call (time_cpu_interleaved: paired samples,
    the budget and the time cap scaled by their number); GPU: one after the other with do_bench.
    An implementation whose timing raises gets an error row in ``rows`` and None."""
    out: list[Timing | None] = [None] * len(pending)

    def fail(i, exc):
        impl, base = pending[i][0], pending[i][1]
        rows.append({**base, "status": "error", "reason": short_error(exc)})
        if impl.kind == "pygen":  # baseline errors are shown in the table only
            log(f"{case.op} {mode} {base['dtype']} {impl.name}: {short_error(exc)}")

    try:
        if opts.device.type == "cuda":
            for i, (impl, *_rest) in enumerate(pending):
                try:
                    fn, reset = timed_callable(impl, inputs, mode)
                    out[i] = _timing(fn, reset, inputs.leaves, opts)
                except Exception as exc:
                    fail(i, exc)
            return out
        calls, idx = [], []
        for i, (impl, *_rest) in enumerate(pending):
            try:
                calls.append(timed_callable(impl, inputs, mode))
                idx.append(i)
            except Exception as exc:
                fail(i, exc)
        if not calls:
            return out
        k = len(calls)
        # no warm-up round: the correctness check (or, for the reference, the oracle run) just ran
        # the same calls at the same shapes
        kw = dict(
            min_rounds=max(opts.cpu_min_reps, opts.cpu_min_rounds),
            budget_s=opts.cpu_budget_s,
            max_total_s=opts.cpu_max_total_s,
        )
        # every (row, baseline) ratio the table will show; past the budget, rounds go on (up to the
        # time cap) while one of them has no verdict yet
        pairs = [(a, b) for a in range(k) for b in range(k) if a != b and pending[idx[b]][0].kind == "baseline"]

        def settled(samples):
            stats = (ratio_stats(_cpu_timing(samples[a]), _cpu_timing(samples[b])) for a, b in pairs)
            return all(st["verdict"] != "noisy" and not st["wide"] for st in stats)

        try:
            for i, t in zip(
                idx,
                time_cpu_interleaved(
                    calls,
                    **{**kw, "budget_s": kw["budget_s"] * k, "max_total_s": kw["max_total_s"] * k},
                    settled=settled,
                ),
            ):
                out[i] = t
        except Exception:
            # one of them raised mid-run: time them one at a time to find which (unpaired samples)
            for i, (fn, reset) in zip(idx, calls):
                try:
                    t = time_cpu(
                        fn,
                        reset,
                        warmup=0,
                        min_reps=kw["min_rounds"],
                        budget_s=kw["budget_s"],
                        max_total_s=kw["max_total_s"],
                    )
                    t.samples_ms = None
                    out[i] = t
                except Exception as exc:
                    fail(i, exc)
        return out
    finally:
        _set_requires_grad(inputs, False)


def _timing(fn, reset, leaves, opts: BenchOptions) -> Timing:
    if opts.device.type == "cuda":
        grad_to_none = [t for t in leaves if t.requires_grad] or None

        def call():
            fn()

        return time_cuda(call, grad_to_none, allow_cudagraph=opts.allow_cudagraph)
    # no extra warm-up: the correctness check (or, for the reference, the oracle run) just ran
    # the same call at the same shapes
    return time_cpu(
        fn, reset, warmup=0, min_reps=opts.cpu_min_reps, budget_s=opts.cpu_budget_s, max_total_s=opts.cpu_max_total_s
    )


def reference_impl(case: Case) -> Impl:
    """The oracle: the eager reference through the public op, at the benchmark dtype."""
    return Impl("reference", "baseline", lambda I: case.pygen(I, "reference"))


def run_case(
    case: Case,
    opts: BenchOptions,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda s: None,
    out: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Check then time every implementation of ``case`` for every dtype and mode.

    Returns one dict per (impl, dtype, mode): status "ok" (timed), "mismatch" (disagreed with the
    reference and was not timed: a pygen backend, or a baseline not declared in
    ``case.approximate``), "error" (it raised) or "skipped" (unavailable, with the reason).
    The implementations of one (dtype, mode) are checked first, then timed together (CPU:
    interleaved); every timed row carries ``vs``: baseline name -> :func:`ratio_stats` of this
    row against that baseline. Rows are appended to ``out``
    (returned) as they are measured, so a caller interrupted mid-case (Ctrl-C) still has them.
    """
    rows: list[dict[str, Any]] = out if out is not None else []
    impls = build_impls(case, opts.device, opts.backends, opts.baselines)
    ref_impl = reference_impl(case)
    for dtype in opts.dtypes:
        # --max-time starts no new (case, dtype); one started runs every implementation and mode, so
        # a pygen row is never timed without the baselines it is compared with
        if opts.deadline is not None and time.monotonic() > opts.deadline:
            for impl in impls:
                for mode in opts.modes:
                    rows.append(
                        {
                            **_row_base(case, dtype, mode, impl),
                            "status": "skipped",
                            # an implementation that could not run anyway keeps its own reason
                            "reason": impl.skip if impl.fn is None else "time budget (--max-time) exhausted",
                        }
                    )
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
            except Exception as exc:  # reported per row below; one broken case must not end the run
                ref_errors[m] = f"the reference failed: {short_error(exc)}"
        for mode in opts.modes:
            pending: list[tuple[Impl, dict[str, Any], bool, float]] = []  # checked, to be timed
            for impl in impls:
                base = _row_base(case, dtype, mode, impl)
                if progress:
                    progress.step(f"{case.op} {case.label} {base['dtype']} {mode} {impl.name}")
                checked = _check_impl(case, impl, inputs, mode, expected, ref_errors, opts, base, log)
                if isinstance(checked, dict):
                    rows.append(checked)
                else:
                    pending.append(checked)
            timings = _time_group(pending, inputs, mode, opts, rows, log, case)
            rows.extend(_timed_rows(case, inputs, mode, pending, timings))
        del inputs, expected
    return rows


def _row_base(case: Case, dtype, mode: str, impl: Impl) -> dict[str, Any]:
    return {
        "family": case.family,
        "op": case.op,
        "shape_label": case.label,
        "shape": case.shape,
        "dtype": str(dtype).removeprefix("torch."),
        "mode": mode,
        "backend": impl.name,
        "kind": impl.kind,
    }


def _check_impl(case, impl, inputs, mode, expected, ref_errors, opts, base, log):
    """One implementation's check against the reference: its final row (skipped / error /
    mismatch) or, when it is to be timed, the (impl, base row, correct, max abs err) entry."""
    if mode in ref_errors:
        return {**base, "status": "error", "reason": ref_errors[mode]}
    if mode not in expected:
        return {**base, "status": "skipped", "reason": f"{case.op} has no {mode} (forward-only)"}
    if impl.fn is None:
        return {**base, "status": "skipped", "reason": impl.skip}
    try:
        if impl.name == "reference":  # the oracle itself
            ok, err = True, 0.0
        else:
            ok, err = check(case, impl, inputs, mode, expected[mode])
    except NoBackward as exc:
        return {**base, "status": "skipped", "reason": str(exc)}
    except Exception as exc:
        if impl.kind == "pygen":  # baseline errors are shown in the table only
            log(f"{case.op} {mode} {base['dtype']} {impl.name}: {short_error(exc)}")
        return {**base, "status": "error", "reason": short_error(exc)}
    if not ok and impl.kind == "pygen":
        log(f"MISMATCH {case.op} {mode} {base['dtype']} {impl.name}: max abs err {err:.3g}")
        return {
            **base,
            "status": "mismatch",
            "max_abs_err": err,
            "reason": "output differs from the reference; not timed",
        }
    if not ok and impl.name not in case.approximate:
        # a baseline that computes something else is not the same work: no timing, no ratio
        log(
            f"baseline {impl.name} differs from the reference on {case.op} {mode} "
            f"{base['dtype']}: max abs err {err:.3g}; not timed"
        )
        return {
            **base,
            "status": "mismatch",
            "max_abs_err": err,
            "reason": f"baseline output differs from the reference (max abs err "
            f"{err:.3g}): not the same computation, not timed",
        }
    return impl, base, ok, err


def _timed_rows(case, inputs, mode, pending, timings) -> list[dict[str, Any]]:
    """The "ok" rows of the timed implementations, each with ``vs``: baseline -> ratio stats."""
    timed_rows = []
    for (impl, base, ok, err), t in zip(pending, timings):
        if t is None:
            continue
        nbytes = int(case.bytes_model(inputs, mode))
        row = {
            **base,
            "status": "ok",
            "correct": ok,
            "max_abs_err": err,
            "median_ms": t.median_ms,
            "p20_ms": t.p20_ms,
            "p80_ms": t.p80_ms,
            "min_ms": t.min_ms,
            "samples": t.n,
            "timer": t.timer,
            "wall_median_ms": t.wall_median_ms,
            "bytes": nbytes,
            "bytes_model": case.bytes_formula,
            "gbps": nbytes / (t.median_ms * 1e-3) / 1e9 if t.median_ms > 0 else None,
        }
        if not ok:
            row["approximate"] = case.approximate[impl.name]
            row["reason"] = (
                f"differs from the reference by design (max abs err {err:.3g}): {case.approximate[impl.name]}"
            )
        timed_rows.append((row, t))
    for row, t in timed_rows:
        row["vs"] = {
            other["backend"]: ratio_stats(t, tb)
            for other, tb in timed_rows
            if other is not row and other["kind"] == "baseline"
        }
    return [row for row, _ in timed_rows]


def count_steps(cases: Sequence[Case], opts: BenchOptions) -> int:
    per_case = 0
    for c in cases:
        per_case += len(build_impls(c, opts.device, opts.backends, opts.baselines))
    return per_case * len(opts.dtypes) * len(opts.modes)


# ----------------------------------------------------------------------------------------------
# Output: progress bar, table, JSON lines, plot
# ----------------------------------------------------------------------------------------------
def format_duration(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """A progress bar on stderr: ``[####....] step/total elapsed eta ETA running: <step>``, the
    step named being the one now running. One line redrawn in place on a terminal, a line per
    step otherwise. The ETA is the mean time of the finished steps times the steps left (steps
    differ a lot in cost, a torch.compile far more than an eager call, so it is a rough guide)."""

    def __init__(self, total: int, stream=None, width: int = 24, clock: Callable[[], float] = time.perf_counter):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.clock = clock
        self.t0 = clock()
        self.current = ""

    def eta_s(self) -> float | None:
        """Seconds left, from the steps finished so far (None before the first one finishes)."""
        finished = self.done - 1  # step() is called when a step starts
        if finished <= 0:
            return None
        return (self.clock() - self.t0) / finished * max(self.total - finished, 0)

    def line(self) -> str:
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        eta = self.eta_s()
        return (
            f"[{bar}] {self.done}/{self.total} {format_duration(self.clock() - self.t0)} "
            f"eta {'?' if eta is None else format_duration(eta)} running: {self.current}"
        )

    def step(self, what: str) -> None:
        self.done += 1
        self.current = what
        line = self.line()
        if self.tty:
            self.stream.write("\r\x1b[2K" + line[:200])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the bar (on a terminal) before other output; the next step() redraws it."""
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()

    def close(self) -> None:
        self.clear()


BASELINE_ORDER = ("torchvision", "reference", "compile(reference)")


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _fmt_ratio(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _row_vs(row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``row["vs"][base]`` as run_case computed it, else (rows from elsewhere, e.g. old JSON
    lines) the unpaired p20/p80 rule of ratio_stats from the two rows' quantiles."""
    stats = (row.get("vs") or {}).get(base["backend"])
    if stats is not None:
        return stats

    def timing(r):
        return Timing(
            r["median_ms"],
            r.get("p20_ms", r["median_ms"]),
            r.get("p80_ms", r["median_ms"]),
            r.get("samples"),
            r.get("timer", ""),
        )

    return ratio_stats(timing(row), timing(base))


def format_ratio(stats: dict[str, Any]) -> str:
    """One ratio cell: ``3.02 [2.91-3.15] faster``, ``1.01 [0.97-1.04] ~``; where the interval
    makes the ratio meaningless no estimate is printed: ``faster, noisy [7.78-23.9]`` (it excludes
    1 but spans more than MAX_CI_WIDTH), ``noisy [0.16-7.65]`` (no verdict), ``noisy (n=4)``."""
    est, lo, hi, v = stats.get("ratio"), stats.get("lo"), stats.get("hi"), stats.get("verdict")
    if est is None:
        return "-"
    if lo is None or hi is None:
        return f"noisy (n={stats.get('n')})"
    ci = f"[{_fmt_ratio(lo)}-{_fmt_ratio(hi)}]"
    if v == "noisy":
        return f"noisy {ci}"
    if stats.get("wide", is_wide(stats)):
        return f"{v}, noisy {ci}"
    return f"{_fmt_ratio(est)} {ci} {v}"


def table_baselines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The timed baselines of ``rows``: BASELINE_ORDER first, then the others as they appear."""
    timed = [r["backend"] for r in rows if r.get("kind") == "baseline" and r.get("median_ms")]
    return [b for b in BASELINE_ORDER if b in timed] + [b for b in dict.fromkeys(timed) if b not in BASELINE_ORDER]


def format_table(
    rows: Sequence[dict[str, Any]], copy_gbps: float | None = None, peak_gbps: float | None = None, legend: bool = True
) -> str:
    """Rows grouped by (op, shape, dtype, mode); one column per timed baseline with this row's
    speedup over it (format_ratio), then, with ``legend``, the lines of :func:`format_legend`."""
    present = table_baselines(rows)
    head = ["op", "shape", "dtype", "mode", "impl", "median ms", "p20 ms", "p80 ms", "n", "GB/s"]
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
        timed = {r["backend"]: r for r in rs if r.get("median_ms")}
        for r in rs:
            ms = r.get("median_ms")
            if ms is None:
                line = [op, label, dtype, mode, r["backend"], r["status"].upper(), "", "", "", ""]
                line += [""] * (len(head) - len(line))
                line[-1] = (line[-1] + " " + str(r.get("reason", ""))[:110]).strip()
                body.append(line)
                continue
            line = [
                op,
                label,
                dtype,
                mode,
                r["backend"]
                + ("" if r.get("correct", True) else " (!)")
                + (GRAPH_FALLBACK_MARK if GRAPH_FALLBACK in str(r.get("timer", "")) else ""),
                f"{ms:.4g}",
                f"{r['p20_ms']:.4g}",
                f"{r['p80_ms']:.4g}",
                _fmt(r.get("samples"), "d"),
                _fmt(r.get("gbps"), ".3g"),
            ]
            if peak_gbps:
                line.append(_fmt(r["gbps"] / peak_gbps * 100 if r.get("gbps") else None, ".1f"))
            if copy_gbps:
                line.append(_fmt(r["gbps"] / copy_gbps * 100 if r.get("gbps") else None, ".1f"))
            line += [format_ratio(_row_vs(r, timed[b])) if b in timed and b != r["backend"] else "-" for b in present]
            body.append(line)
    nfix = 6  # op .. median ms: status rows put their reason after these
    widths = [max(len(str(x[i])) for x in [head] + [b[: len(head)] for b in body]) for i in range(len(head))]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    for b in body:
        cells = b[: len(head)]
        if cells[5] in ("SKIPPED", "ERROR", "MISMATCH"):
            out.append(
                "  ".join(str(c).ljust(w) for c, w in zip(cells[:nfix], widths[:nfix]))
                + "  "
                + " ".join(str(c) for c in cells[nfix:] if c)
            )
        else:
            out.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())
    if legend:
        out += ["", format_legend(rows)]
    return "\n".join(out)


def format_legend(rows: Sequence[dict[str, Any]] = ()) -> str:
    """What the columns and marks of format_table mean (the statistics: module docstring)."""
    lines = [
        "legend:",
        "  median/p20/p80 ms  per-call time in ms: median, 20th and 80th percentile of n timed calls; on CPU "
        "with 1 thread the calling thread's CPU time (time slices taken by other processes not counted; "
        'JSON timer "thread_time"), else wall time; on GPU triton do_bench (n -)',
        "  x <baseline>       speedup = baseline time / this row's time (> 1: this row is faster): on CPU "
        "the median of the n paired ratios, the calls of all implementations interleaved round by round "
        f"so that both sides see the same load, with its {round(CI_LEVEL * 100)}% confidence interval "
        "[lo-hi] (order statistics); on GPU median / median with [p20/p80 - p80/p20]",
        f"  faster / slower    a verdict: the whole interval is above {MIN_EFFECT:g} / below "
        f"{1 / MIN_EFFECT:.2f} (smaller differences do not survive from one run to the next on a shared "
        f'CPU); "faster, noisy [lo-hi]": it spans more than {MAX_CI_WIDTH:g}x, so the direction is a '
        "result and the size is not (no ratio printed)",
        f"  ~                  no verdict, no difference shown: the interval reaches inside "
        f"{1 / MIN_EFFECT:.2f}-{MIN_EFFECT:g} and lies within {1 / NEAR_BAND:.2f}-{NEAR_BAND:g}",
        "  noisy              no verdict: the interval is wider than that, or n is too small for one "
        "(n < 6); the interval is printed, not a ratio",
        "  GB/s               modelled bytes / median time (byte model in bench/<family>.py)",
    ]
    if any(r.get("median_ms") and r.get("correct") is False for r in rows):
        lines.append(
            "  (!)                an approximate baseline: timed although its output differs from "
            "the reference beyond the tolerance, because it is the same layer computed differently by "
            "design (unquantised matmul against FP8, torchvision's ps_roi_pool clipping); the reason is "
            "in the JSON line"
        )
    fallbacks = [r for r in rows if r.get("median_ms") and GRAPH_FALLBACK in str(r.get("timer", ""))]
    if fallbacks:
        lines.append(
            f"  {GRAPH_FALLBACK_MARK.strip():<19}timed with do_bench, not under a CUDA graph: the call "
            f"could not be captured (JSON timer says why):"
        )
        lines += [
            f"    {r['op']} {r['shape_label']} {r['dtype']} {r['mode']} {r['backend']}: {r['timer']}" for r in fallbacks
        ]
    return "\n".join(lines)


RESULTS_ENV = "PYGEN_RESULTS_DIR"


def results_dir() -> Path:
    """Where ``pygen bench`` writes JSON lines by default (``<this>/<device_tag>/<family>.jsonl``):
    ``$PYGEN_RESULTS_DIR``, else ``$XDG_CACHE_HOME/pygen/bench`` (``~/.cache/pygen/bench``).
    Outside the source tree on purpose: bench/results (:func:`committed_results_dir`) holds only
    deliberate, committed runs, written there with ``pygen bench --results-dir bench/results/<device>``."""
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "pygen" / "bench"


def committed_results_dir() -> Path:
    """bench/results of the source checkout (pygen.bench/results when installed as a package):
    the curated, committed results, one folder per device tag."""
    return _bench_package_dir() / "results"


def _bench_package_dir() -> Path:
    mod = load_bench_package()
    return Path(mod.__file__).resolve().parent


def load_bench_package():
    """The benchmark definitions, ``pygen.bench``: the repository's bench/ folder, installed under
    that name by setup.py's package_dir mapping (editable installs included)."""
    import importlib

    try:
        return importlib.import_module("pygen.bench")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "pygen.bench (the benchmark definitions, bench/) is not installed: install pygen from its "
            "checkout with `pip install -e .`"
        ) from exc


def append_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True, default=str) + "\n")


def plot_baseline(group: Sequence[dict[str, Any]], baseline: str | None = None) -> str | None:
    """The baseline a (op, shape, dtype, mode) group is plotted against: ``baseline`` when it was
    timed there, else the library a user would otherwise call (the first timed baseline that is
    neither the reference nor its torch.compile: torchvision, vLLM, FlashMLA, torch._scaled_mm,
    ...), else ``compile(reference)``, else ``reference``."""
    timed = [r["backend"] for r in group if r.get("kind") == "baseline" and r.get("median_ms")]
    if baseline is not None:
        return baseline if baseline in timed else None
    lib = [b for b in timed if b not in ("reference", "compile(reference)")]
    for b in lib + ["compile(reference)", "reference"]:
        if b in timed:
            return b
    return None


def plot_entries(rows: Sequence[dict[str, Any]], baseline: str | None = None) -> dict[str, list[dict]]:
    """family -> one entry per plotted row: {"label", "stats" (ratio_stats), "text"}. The rows are
    the pygen backends, each against :func:`plot_baseline` of its group; a family with no pygen
    row timed (no kernel on this device) plots its other baselines against the chosen one."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("median_ms"):
            groups.setdefault((r.get("family", ""), r["op"], r["shape_label"], r["dtype"], r["mode"]), []).append(r)
    fams: dict[str, list[dict]] = {}
    has_pygen = {k[0] for k, rs in groups.items() if any(r.get("kind") == "pygen" for r in rs)}
    for (fam, op, label, dtype, mode), rs in groups.items():
        b = plot_baseline(rs, baseline)
        if b is None:
            continue
        base = next(r for r in rs if r["backend"] == b)
        for r in rs:
            if r is base or (fam in has_pygen and r.get("kind") != "pygen"):
                continue
            st = _row_vs(r, base)
            if st.get("ratio") is None:
                continue
            precise = st["verdict"] != "noisy" and not st.get("wide", is_wide(st))
            fams.setdefault(fam, []).append(
                {
                    "label": f"{op} {label} {dtype} {mode}  {r['backend']} vs {b}",
                    "stats": st,
                    "text": format_ratio(st).replace(" [", "x [", 1) if precise else format_ratio(st),
                }
            )
    return fams


def _plot_figure(rows: Sequence[dict[str, Any]], baseline: str | None = None):
    """The figure of :func:`plot` (None when nothing can be plotted): one panel per family, one
    row per entry, the speedup on a log2 axis (symmetric about 1x, so 2x faster and 2x slower
    sit at the same distance from the 1x line), the CI as an error bar, the number written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = plot_entries(rows, baseline)
    if not fams:
        return None
    heights = [max(len(es), 1) * 0.34 + 0.9 for es in fams.values()]
    fig, axes = plt.subplots(
        len(fams), 1, figsize=(11, sum(heights) + 0.6), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    color = {"faster": "tab:green", "slower": "tab:red", "~": "tab:gray", "noisy": "tab:gray"}
    for ax, (fam, es) in zip(axes[:, 0], fams.items()):
        ys = list(range(len(es)))[::-1]
        vals = []
        for y, e in zip(ys, es):
            st = e["stats"]
            est, lo, hi, v = st["ratio"], st.get("lo"), st.get("hi"), st["verdict"]
            vals += [x for x in (est, lo, hi) if x]
            if lo is not None and hi is not None:
                ax.plot([lo, hi], [y, y], color=color[v], lw=2, alpha=0.6, solid_capstyle="butt")
            vague = v == "noisy" or st.get("wide", is_wide(st))
            ax.plot([est], [y], "o", color=color[v], mfc="white" if vague else color[v], ms=6)
            ax.annotate(
                e["text"],
                (hi if hi else est, y),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize=7.5,
                color="dimgray" if vague else "black",
            )
        ax.set_xscale("log", base=2)
        top = max(max(vals), 1.0 / min(vals), 2.0) * 1.15
        ax.set_xlim(1.0 / top, top * 4)  # room on the right for the labels
        ax.axvline(1.0, color="black", lw=1)  # 1x: as fast as the baseline
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _p: f"{x:g}x"))
        ax.set_yticks(ys)
        ax.set_yticklabels([e["label"] for e in es], fontsize=7.5)
        ax.set_ylim(-0.7, len(es) - 0.3)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(
            f"{fam}: speedup over the baseline (> 1x: faster; bar = {round(CI_LEVEL * 100)}% CI; "
            f"hollow = noisy: no ratio)",
            fontsize=9,
            loc="left",
        )
    dev = rows[0].get("device_name", "") if rows else ""
    thr = rows[0].get("threads") if rows else None
    fig.suptitle(f"pygen bench on {dev}" + (f", threads: {thr}" if thr else ""), fontsize=10)
    fig.tight_layout()
    return fig


def plot(rows: Sequence[dict[str, Any]], path: Path, baseline: str | None = None) -> str:
    """A PNG of the speedups (plot_entries / _plot_figure): per family, per op, the pygen
    backend's speedup over the chosen baseline with its CI and the number written on it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return (
            f"--plot: matplotlib is not importable ({type(exc).__name__}: {exc}); "
            f"`pip install matplotlib` (or pygen[plot]) to get PNG charts"
        )
    fig = _plot_figure(rows, baseline)
    if fig is None:
        return "--plot: no timed row has a timed baseline to compare with, no chart written"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long row labels stay inside the image
    plt.close(fig)
    return f"plot written to {path}"


def as_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)
