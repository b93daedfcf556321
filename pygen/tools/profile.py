"""``pygen profile``: a model from pygen.models run end to end with the reference ops and with pygen's
ops, outputs compared, timed as ``pygen bench`` times (pygen.tools.harness), and the top ops of
torch.profiler for each."""

from __future__ import annotations

import sys

import torch

from ..models import build, set_backend


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _run_for(model, inputs):
    def call():
        with torch.no_grad():
            return model(*inputs)

    return call


def profile_model(
    name: str,
    device: str | None = None,
    backend: str | None = None,
    quick: bool = False,
    dtype: str = "float32",
    top: int = 12,
    reps_budget_s: float | None = None,
    stream=None,
    threads: int | None = None,
) -> int:
    """Run model ``name`` with reference ops and with pygen ops (same weights, same inputs):
    check the outputs agree, print the end-to-end speedup and the top ops by self time from
    torch.profiler for both runs. Returns an exit status.

    Timing as in ``pygen bench`` (pygen.tools.harness docstring): on CPU a fixed thread count
    (``threads``, default 1; printed with the load average), the reference and pygen forward
    passes interleaved call by call, the speedup = median of the paired ratios with its 95%
    order-statistic CI and a verdict (faster / slower / ~ / noisy); on GPU do_bench medians."""
    from . import harness as H

    out = stream or sys.stdout

    def say(*a):
        print(*a, file=out, flush=True)

    dev = H.resolve_device(device)
    dt = H.DTYPES[dtype]
    threads_before = torch.get_num_threads()
    nthreads = H.set_cpu_threads(threads or 1) if dev.type == "cpu" else None
    try:
        return _profile(name, dev, dt, backend, quick, dtype, top, reps_budget_s, say, nthreads)
    finally:
        torch.set_num_threads(threads_before)


def _profile(name, dev, dt, backend, quick, dtype, top, reps_budget_s, say, nthreads) -> int:
    from torch.profiler import ProfilerActivity, profile

    from .. import _backend
    from . import harness as H

    model, cfg = build(name, quick=quick)
    model = model.to(device=dev, dtype=dt).eval()
    inputs = model.example_inputs(cfg, dev, dt)
    if backend is not None:
        ok, why = _backend.backend_status(backend, dev)
        if not ok:
            say(f"pygen profile: backend {backend!r} is unavailable on {dev.type}: {why}")
            return 2
        # one untimed call: an op of the model without this backend refuses it (exit 2 before
        # anything is printed or measured, as pygen bench refuses a backend none of its ops has)
        set_backend(model, backend)
        try:
            _run_for(model, inputs)()
        except ValueError as exc:
            if f"backend {backend!r}" not in str(exc):
                raise
            say(f"pygen profile: --backend {backend}: {exc}")
            return 2
    say(
        f"pygen profile {name}{' (quick)' if quick else ''} on {H.device_name(dev)}, {dtype}; "
        f"pygen ops: {'backend ' + backend if backend else 'automatic backend choice per op'}"
    )
    say(f"config: {cfg}")
    if dev.type == "cpu":
        say(
            f"threads: {nthreads} (torch and pygen's OpenMP kernels; --threads N to change); load average "
            f"{H.load_average()} on {H.cpu_count()} cores at the start"
        )

    ref_call, pg_call, agree = _compare_outputs(model, inputs, backend, dt, say)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    sort_key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    # Which pygen kernels the pygen run uses. Where none does (the model's ops are GPU-only and this
    # is a CPU), both runs are the reference: timing one against the other would print a "speedup"
    # of the reference over itself. Say so, and show the reference's profile only.
    set_backend(model, backend)
    with profile(activities=[ProfilerActivity.CPU]) as probe:
        pg_call()
    if not any(e.key.startswith("pygen::") for e in probe.key_averages()):
        where = (
            f"no pygen kernel on {dev.type} for this model's ops (GPU only)"
            if dev.type == "cpu"
            else f"no pygen kernel ran on {dev.type} for this model's ops"
        )
        say(
            f"pygen ops: {where}; the pygen run would be the reference itself, so no speedup is "
            f"reported (run it on a GPU)"
        )
        set_backend(model, "reference")
        with profile(activities=activities) as prof:
            for _ in range(3):
                ref_call()
        say(f"\ntop {top} ops by self time, reference ops (3 forward passes):")
        say(prof.key_averages().table(sort_by=sort_key, row_limit=top))
        set_backend(model, backend)
        return 0 if agree else 1

    budget = reps_budget_s if reps_budget_s is not None else (0.3 if quick else 2.0)
    _time_both(model, backend, dev, ref_call, pg_call, budget, nthreads, say)

    _profiles(model, backend, dev, ref_call, pg_call, activities, sort_key, top, say)
    set_backend(model, backend)
    return 0 if agree else 1


def _compare_outputs(model, inputs, backend, dt, say):
    """Runs the model with the reference ops and with pygen's; says how far apart the outputs are.
    Returns (reference call, pygen call, whether they agree)."""
    from . import harness as H

    set_backend(model, "reference")
    ref_call = _run_for(model, inputs)
    ref_out = _flat(ref_call())
    set_backend(model, backend)
    pg_call = _run_for(model, inputs)
    pg_out = _flat(pg_call())
    tol = H.TOLERANCE.get(dt, 1e-2) * 10  # a matmul after the pooling amplifies rounding
    errs = [float((a.double() - b.double()).abs().max()) if a.numel() else 0.0 for a, b in zip(pg_out, ref_out)]
    scale = max((float(b.double().abs().max()) for b in ref_out if b.numel()), default=1.0)
    agree = all(e <= tol * (1.0 + scale) for e in errs)
    say(
        f"outputs: max abs difference pygen vs reference {max(errs, default=0.0):.3g} "
        f"({'agree' if agree else 'DISAGREE'} within {tol:g} x (1 + max|ref| = {scale:.3g}))"
    )
    return ref_call, pg_call, agree


def _time_both(model, backend, dev, ref_call, pg_call, budget, nthreads, say) -> None:
    """Times the two runs as pygen bench does and says the end-to-end speedup."""
    from . import harness as H

    if dev.type == "cuda":
        set_backend(model, "reference")
        t_ref = H.time_cuda(ref_call, allow_cudagraph=False)
        set_backend(model, backend)
        t_pg = H.time_cuda(pg_call, allow_cudagraph=False)
        how = "do_bench medians"
    else:
        # one model, two configurations: switching the backend is the "reset" of each call
        t_ref, t_pg = H.time_cpu_interleaved(
            [(ref_call, lambda: set_backend(model, "reference")), (pg_call, lambda: set_backend(model, backend))],
            min_rounds=10,
            budget_s=2 * budget,
            max_total_s=120.0,
        )
        how = (
            f"{t_ref.n} interleaved rounds, timer {t_ref.timer}, threads {nthreads}, load average now "
            f"{H.load_average()}"
        )
    for label, t in (("reference ops:", t_ref), ("pygen ops:", t_pg)):
        say(
            f"{label:<14} median {t.median_ms:.3f} ms (p20 {t.p20_ms:.3f} ms, p80 {t.p80_ms:.3f} ms"
            + (f", min {t.min_ms:.3f} ms" if t.min_ms is not None else "")
            + ")"
        )
    st = H.ratio_stats(t_pg, t_ref)
    say(
        f"end-to-end speedup: {H.format_ratio(st)} ({how}; speedup = reference time / pygen time, the "
        f"median of the paired ratios [{round(H.CI_LEVEL * 100)}% CI]; faster / slower need the whole CI "
        f"beyond {H.MIN_EFFECT:g}x / {1 / H.MIN_EFFECT:.2f}x, ~ and noisy are no verdict)"
    )


def _profiles(model, backend, dev, ref_call, pg_call, activities, sort_key, top, say) -> None:
    """torch.profiler's top ops of each run, and which pygen kernel ops ran."""
    from torch.profiler import profile

    for label, b, call in (("reference ops", "reference", ref_call), ("pygen ops", backend, pg_call)):
        set_backend(model, b)
        call()
        with profile(activities=activities) as prof:
            for _ in range(3):
                call()
            if dev.type == "cuda":
                torch.cuda.synchronize()
        events = prof.key_averages()
        say(f"\ntop {top} ops by self time, {label} (3 forward passes):")
        say(events.table(sort_by=sort_key, row_limit=top))
        if b != "reference":
            kernels = sorted({e.key for e in events if e.key.startswith("pygen::")})
            say(
                "pygen kernel ops that ran: "
                + (
                    ", ".join(kernels)
                    if kernels
                    else "none (every op used the reference: no kernel backend for this model's ops here)"
                )
            )
