"""The ``pygen`` command (also ``python -m pygen``).

    pygen info                       versions, devices, which backend runs where and why not
    pygen bench [FAMILY ...]         check then time every op x backend x baseline (bench/)
    pygen profile MODEL              a pygen.models model with reference ops vs pygen ops
    pygen inspect [FAMILY ...]       offline sm_90 compile of every Triton kernel and .cu file:
                                     registers, spills, shared memory, wgmma

What ``pygen bench`` runs: on a GPU, the model-size shapes with every baseline, torch.compile of
the reference included (``--quick``: small shapes). On a CPU the default is the small shapes of
every family against the eager baselines, under a minute on 2 cores (the README has measured
times); ``--compile`` adds the torch.compile baseline (its first compiles take several minutes on
2 cores, Inductor caches them), ``--full`` runs the model-size shapes scaled for a CPU with it
(tens of minutes), ``--quick`` is the shortest timing. torch.compile of the reference is timed
only for ops with a pygen kernel on the device: for a GPU-only op on a CPU it would compare the
reference with itself, and that op's table rows say "no pygen kernel on cpu for this op (GPU
only)".
Each family's table is printed as soon as that family finishes; SIGINT (Ctrl-C) or SIGTERM
prints the tables of what was measured so far and exits 128 + the signal number. A run in which
nothing could be measured (every implementation skipped, e.g. ``--no-baselines`` on a CPU for a
GPU-only family) exits 2.

Where results go: JSON lines are appended to ``$PYGEN_RESULTS_DIR/<device>/<family>.jsonl``, by
default ``~/.cache/pygen/bench/<device>/`` (``$XDG_CACHE_HOME`` honoured), outside the source
tree; the run prints the path. ``bench/results/<device>/`` in the checkout holds only deliberate,
committed runs: write there explicitly, e.g. ``pygen bench --full --results-dir
bench/results/cpu-2core`` (the device folder names are ``cpu-<n>core``, ``h200``, ...), and commit
the lines with the commit they measured. ``--json PATH`` appends everything to one file,
``--no-save`` writes nothing.

Each subcommand's ``--help`` lists its options. Exit status: 0 on success, 1 when a pygen
backend failed its correctness check (bench), a model's outputs disagree (profile) or a kernel
failed to compile (inspect), 2 for bad arguments (every argument is checked before anything is
measured), 130 / 143 when a bench run was interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import time
from pathlib import Path


def _print(*a, **k):
    print(*a, **k, flush=True)


BENCH_HELP = __doc__[__doc__.index("What ``pygen bench`` runs") : __doc__.index("Each subcommand")].replace("``", "")


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------
def _optional_version(module: str) -> str:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "installed")
    except Exception as exc:
        return f"not importable ({type(exc).__name__})"


def _installed_version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args) -> int:
    import torch

    import pygen
    from pygen import _backend, _ext
    from pygen.tools.harness import cpu_count, cpu_name, triton_version
    from pygen.tools.inspect import find_nvcc, nvcc_version

    nvcc = find_nvcc()
    _print("pygen", pygen.__version__, "from", Path(pygen.__file__).resolve().parent)
    _print(f"python   {platform.python_version()} ({sys.executable})")
    _print(f"torch    {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    _print(f"triton   {triton_version() or 'not importable'}")
    _print(f"nvcc     {nvcc_version(nvcc) if nvcc else 'not found'}{f' ({nvcc})' if nvcc else ''}")
    for mod in ("torchvision", "matplotlib", "pytest_benchmark", "hypothesis"):
        _print(f"{mod:<17}{_optional_version(mod)}")
    # integrations and benchmark baselines: the installed version only (importing vllm is slow)
    for dist in ("transformers", "vllm", "flash-mla", "sglang"):
        _print(f"{dist:<17}{_installed_version(dist)}")
    env = {k: os.environ[k] for k in ("PYGEN_BACKEND", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES") if k in os.environ}
    if env:
        _print("env      " + " ".join(f"{k}={v}" for k, v in env.items()))

    _print("\ndevices")
    devices = ["cpu"]
    _print(f"  cpu      {cpu_name()}, {cpu_count()} cores, torch threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            _print(
                f"  cuda:{i}   {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
                f"{p.multi_processor_count} SMs"
            )
        devices.append("cuda")
    else:
        _print("  cuda     none (torch.cuda.is_available() is False)")
        devices.append("cuda")

    _print("\ncompiled modules")
    for name, what in (("_C", "host build of csrc/ (cpu backend)"), ("_cuda", "CUDA build of csrc/")):
        err = _ext.load_error(name)
        _print(f"  pygen.{name:<6} {'loaded' if err is None else 'NOT LOADED: ' + err}  [{what}]")

    _print("\nbackends (device: available / reason)")
    for b in _backend.BACKENDS:
        for dev in devices:
            ok, why = _backend.backend_status(b, dev)
            _print(f"  {b:<10} {dev:<5} {'yes' if ok else 'no ':<4} {why}")
            if b == "cpu" and dev == "cpu" and not ok:
                families = ", ".join(sorted(_backend.TORCH_CPU_FAMILIES))
                _print(f"  {'':<10} {'':<5} {'yes':<4} for {families}: PyTorch code, no pygen._C needed")
    for dev in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        _print(f"  auto order on {dev}: {', '.join(_backend.available_backends(dev))}")
    _print_backend_preference(os.environ.get("PYGEN_BACKEND", "").strip())
    return 0


def _print_backend_preference(env: str) -> None:
    """With PYGEN_BACKEND set: which registered ops have that kernel, and that the others fall back
    (each warns once at its first call)."""
    if not env or env == "reference":
        return
    import torch

    import pygen.ops  # noqa: F401 (registers every op)
    from pygen import _backend
    from pygen.ops import _registry

    if env not in _backend.BACKENDS:
        names = ", ".join(_backend.BACKENDS)
        _print(f"\nPYGEN_BACKEND={env} is not a backend (one of {names}): every op raises ValueError")
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ok, why = _backend.backend_status(env, device)
    if not ok:
        _print(
            f"\nPYGEN_BACKEND={env} does not run on {device.type} here ({why}): every op falls back to the "
            f"automatic choice (a warning once per op)"
        )
        return
    by_op = _registry.kernel_backends()
    has = sorted(op for op, bs in by_op.items() if env in bs)
    lacks = sorted(op for op, bs in by_op.items() if env not in bs)
    _print(f"\nPYGEN_BACKEND={env}: ops with a {env} kernel: {', '.join(has) or 'none'}")
    _print(
        f"  the others fall back to the automatic choice (a warning once per op): {', '.join(lacks) or 'none'}; "
        f"ops with no kernel at all (planar, radial, ...) run the reference"
    )


# ---------------------------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------------------------
class BadArgs(Exception):
    """A bad command-line argument: ``main`` prints ``pygen <command>: error: <message>`` on
    stderr and returns 2. Raised before anything is measured."""


def _device(name: str | None):
    """The torch.device for ``--device`` (None: cuda when available, else cpu)."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise BadArgs(
            f"--device cuda: torch sees no CUDA device (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda or 'none'}); leave --device out to use the CPU"
        )
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _check_backend(b: str, device, families=(None,)) -> None:
    """``--backend b`` runs on ``device`` for at least one of ``families`` (None: any op)."""
    from pygen import _backend
    from pygen.tools import harness as H

    if b == "triton" and device.type == "cpu":
        raise BadArgs(
            f"--backend triton on cpu: {H.TRITON_CPU_SKIP}; the triton backend is benchmarked and profiled on GPUs only"
        )
    if b == "cuda" and device.type == "cpu":
        import torch

        raise BadArgs(
            "--backend cuda runs on a GPU, and this run is on the CPU ("
            + (
                "pass --device cuda)"
                if torch.cuda.is_available()
                else "torch sees no CUDA device); on a CPU the pygen backend is cpu"
            )
        )
    status = [_backend.backend_status(b, device, f) for f in families]
    if not any(ok for ok, _ in status):
        raise BadArgs(f"--backend {b} cannot run on {device.type}: {status[0][1]}")


def _check_writable(flag: str, path: Path, is_dir: bool) -> None:
    """``path`` (a file, or a folder when ``is_dir``) can be created or appended to."""
    if path.exists():
        if is_dir and not path.is_dir():
            raise BadArgs(f"{flag} {path}: exists and is not a folder")
        if not is_dir and path.is_dir():
            raise BadArgs(f"{flag} {path}: is a folder (give a file path)")
        if not os.access(path, os.W_OK):
            raise BadArgs(f"{flag} {path}: not writable")
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise BadArgs(f"{flag} {path}: {parent} is not a writable folder")


# ---------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------
# What a run measures, by device and size flag. On a GPU the model-size shapes are the default.
# On a CPU the model-size shapes (even scaled down: bench/<family>.py's CPU sets) keep the eager
# references busy for tens of minutes on 2 cores, and torch.compile of the references costs seconds
# to a minute per (case, mode) the first time (measured on 2 cores at load ~6: the small shapes
# 39 s without it, 6m22s with it and a cold Inductor cache, 1m27s warm), so the CPU default is the
# small shapes with eager baselines only; --compile adds the compile baseline, --full the model sizes.
#   shapes      "quick" -> cases(quick=True), "full" -> cases(quick=False) (the device's model sizes)
#   budget_s    CPU timing: seconds per implementation and (case, dtype, mode), at least (BenchOptions)
#   max_s       CPU timing: at most this many seconds per implementation and (case, dtype, mode)
#   copy_bytes  size of the copy-bandwidth measurement
#   compile     whether torch.compile of the reference is a baseline unless --compile/--no-compile
RUN_SETS = {
    ("cuda", "default"): dict(shapes="full", budget_s=1.0, max_s=30.0, copy_bytes=1 << 30, compile=True),
    ("cuda", "quick"): dict(shapes="quick", budget_s=0.2, max_s=30.0, copy_bytes=1 << 26, compile=True),
    ("cuda", "full"): dict(shapes="full", budget_s=1.0, max_s=30.0, copy_bytes=1 << 30, compile=True),
    ("cpu", "default"): dict(shapes="quick", budget_s=0.2, max_s=5.0, copy_bytes=1 << 26, compile=False),
    ("cpu", "quick"): dict(shapes="quick", budget_s=0.02, max_s=1.0, copy_bytes=1 << 24, compile=False),
    ("cpu", "full"): dict(shapes="full", budget_s=1.0, max_s=30.0, copy_bytes=1 << 30, compile=True),
}
RUN_WORDS = {
    ("cuda", "default"): "model-size shapes (the GPU default)",
    ("cuda", "quick"): "small shapes, short timing (--quick)",
    ("cuda", "full"): "model-size shapes (--full)",
    ("cpu", "default"): "small shapes (the CPU default; --full: the model-size shapes, tens of minutes on 2 cores)",
    ("cpu", "quick"): "small shapes, shortest timing (--quick)",
    ("cpu", "full"): "model-size shapes scaled for a CPU (--full: tens of minutes on 2 cores)",
}
NO_KERNEL = "no pygen kernel on {dev} for this op (GPU only)"


def _kernel_backends(case, device, backends) -> list[str]:
    """The pygen backends that will time ``case`` on ``device`` (after --backend)."""
    from pygen.tools import harness as H

    wanted = [b for b in ("cuda", "triton", "cpu") if not backends or b in backends]
    return [b for b in wanted if H.kernel_status(case, b, device)[0]]


def _case_options(case, opts, args):
    """``opts`` for one case. Where no pygen kernel runs on this device (a GPU-only op on a CPU),
    torch.compile of the reference is left out unless --baseline compile asks for it: it would
    compare the reference with itself, at seconds of compile time per (case, dtype, mode)."""
    import dataclasses

    if (args.baseline and "compile" in args.baseline) or _kernel_backends(case, opts.device, opts.backends):
        return opts
    if opts.baselines is not None:
        names = [b for b in opts.baselines if b != "compile"]
    else:
        names = ["reference"] + list(case.baselines)
    return dataclasses.replace(opts, baselines=names)


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a bench run (``signum`` says which)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _bench_plan(args) -> dict:
    """Validate every bench argument and build the case list; raises BadArgs. Measures nothing."""
    from pygen.tools import harness as H

    pkg = H.load_bench_package()
    families = list(dict.fromkeys(args.family or pkg.FAMILIES))
    unknown = [f for f in families if f not in pkg.FAMILIES]
    if unknown:
        raise BadArgs(f"unknown family {', '.join(map(repr, unknown))}; known: {', '.join(pkg.FAMILIES)}")
    device = _device(args.device)
    for b in dict.fromkeys(args.backend or ()):
        _check_backend(b, device, families)
    _check_bench_options(args)

    which = "full" if args.full else "quick" if args.quick else "default"
    key = (device.type, which)
    run = RUN_SETS[key]
    shapes = run["shapes"]
    by_family: dict[str, list] = {}
    for fam in families:
        by_family[fam] = pkg.load(fam).cases(quick=shapes == "quick", device=device)
    if args.op:
        known_ops = list(dict.fromkeys(c.op for cs in by_family.values() for c in cs))
        bad = [o for o in dict.fromkeys(args.op) if o not in known_ops]
        if bad:
            which_fams = ("family " if len(families) == 1 else "families ") + ", ".join(families)
            raise BadArgs(f"unknown op {', '.join(map(repr, bad))} for {which_fams}; known: {', '.join(known_ops)}")
        by_family = {f: [c for c in cs if c.op in args.op] for f, cs in by_family.items()}
    by_family = {f: cs for f, cs in by_family.items() if cs}
    all_cases = [c for cs in by_family.values() for c in cs]
    if not all_cases:
        raise BadArgs("no case matches the filters")
    if args.backend:
        has = [c for c in all_cases if c.backends is None or set(c.backends) & set(args.backend)]
        if not has:
            per_family = "; ".join(
                f"{f}: {', '.join(sorted({b for c in cs for b in (c.backends or ('cuda', 'triton', 'cpu'))}))}"
                for f, cs in by_family.items()
            )
            raise BadArgs(
                f"--backend {', '.join(args.backend)}: none of the selected ops has a pygen "
                f"{'/'.join(args.backend)} kernel (kernel backends per family: {per_family})"
            )
    baselines = _bench_baselines(args, all_cases, run)
    return {
        "device": device,
        "which": which,
        "key": key,
        "shapes": shapes,
        "by_family": by_family,
        "baselines": baselines,
        "run": run,
    }


def _check_bench_options(args) -> None:
    """--max-time, --threads and the output paths (--plot also needs matplotlib)."""
    if args.max_time is not None and not (args.max_time >= 0):
        raise BadArgs(f"--max-time {args.max_time:g}: give a number of seconds >= 0")
    if args.threads is not None and args.threads < 1:
        raise BadArgs(f"--threads {args.threads}: give a number of threads >= 1")
    if args.plot:
        try:
            import matplotlib  # noqa: F401 (probe: --plot needs matplotlib)
        except Exception as exc:
            raise BadArgs(
                f"--plot needs matplotlib, which is not importable ({type(exc).__name__}: {exc}); "
                f"`pip install matplotlib` (or pygen[plot])"
            ) from None
        _check_writable("--plot", Path(args.plot), is_dir=False)
    if args.json:
        _check_writable("--json", Path(args.json), is_dir=False)
    if args.results_dir:
        _check_writable("--results-dir", Path(args.results_dir), is_dir=True)


def _bench_baselines(args, all_cases, run) -> list[str] | None:
    """The baselines to time (None: all, compile included); unknown names raise BadArgs."""
    baselines = None if args.baseline is None else list(args.baseline)
    if baselines:
        known = {"reference", "compile"} | {name for c in all_cases for name in c.baselines}
        bad = [b for b in baselines if b not in known]
        if bad:
            raise BadArgs(
                f"unknown baseline {', '.join(map(repr, bad))} for these cases; known: {', '.join(sorted(known))}"
            )
    compile_on = run["compile"] if args.compile is None else args.compile
    if baselines is None and not compile_on:
        baselines = ["reference"] + sorted({name for c in all_cases for name in c.baselines})
    elif baselines is not None and args.compile is not None:
        baselines = [b for b in baselines if b != "compile"] + (["compile"] if args.compile else [])
    return baselines


def _no_kernel_reason(case, pygen_rows: list[dict], device) -> str:
    if device.type == "cpu" and case.backends is not None and "cpu" not in case.backends:
        return NO_KERNEL.format(dev=device.type)
    why = "; ".join(dict.fromkeys(f"{r['backend']}: {r.get('reason')}" for r in pygen_rows))
    return f"no pygen kernel ran on {device.type}" + (f" ({why})" if why else " (none selected by --backend)")


def _with_no_kernel_rows(case, rows: list[dict], device) -> list[dict]:
    """The rows of one case as shown in the table: for every (dtype, mode) with baseline rows but
    no pygen row that ran, a first row ``pygen  SKIPPED  no pygen kernel on cpu for this op (GPU
    only)``, so that the baselines compared with each other are not read as pygen's results."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dtype"], r["mode"]), []).append(r)
    out = []
    for (dtype, mode), rs in groups.items():
        shown = [r for r in rs if r["status"] != "skipped"]
        if shown and not any(r["kind"] == "pygen" for r in shown):
            why = _no_kernel_reason(case, [r for r in rs if r["kind"] == "pygen"], device)
            out.append(
                {
                    "family": case.family,
                    "op": case.op,
                    "shape_label": case.label,
                    "shape": case.shape,
                    "dtype": dtype,
                    "mode": mode,
                    "backend": "pygen",
                    "kind": "pygen",
                    "status": "skipped",
                    "no_kernel": True,
                    "reason": why,
                }
            )
        out.extend(shown)
    return out


def cmd_bench(args) -> int:
    import torch

    from pygen.tools import harness as H

    plan = _bench_plan(args)  # every argument checked before anything is measured
    device, by_family = plan["device"], plan["by_family"]
    dtype_names = args.dtype or (["float32"] if device.type == "cpu" else ["float32", "bfloat16"])
    modes = args.mode or ["fwd", "fwd+bwd"]
    opts = H.BenchOptions(
        device=device,
        dtypes=[H.DTYPES[d] for d in dtype_names],
        modes=modes,
        backends=args.backend,
        baselines=plan["baselines"],
        cpu_budget_s=plan["run"]["budget_s"],
        cpu_max_total_s=plan["run"]["max_s"],
        allow_cudagraph=not args.no_cudagraph,
    )
    # a fixed, reported thread count (pygen.tools.harness docstring: why 1 on a CPU by default)
    threads_before = torch.get_num_threads()
    threads = H.set_cpu_threads(args.threads or (1 if device.type == "cpu" else None))
    meta = H.env_info(device)
    _print_bench_header(args, plan, meta, dtype_names, modes, threads)
    old_handlers = {}

    def on_signal(signum, frame):
        raise _Interrupted(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old_handlers[sig] = signal.signal(sig, on_signal)
        except (ValueError, OSError):  # not the main thread
            pass
    try:
        rows, started, written, stop = _run_bench(args, plan, opts, meta, old_handlers)
    finally:
        _restore(old_handlers)
        torch.set_num_threads(threads_before)  # main() may be called in-process (tests)
    return _bench_outcome(args, by_family, rows, started, written, stop)


def _print_bench_header(args, plan, meta, dtype_names, modes, threads) -> None:
    """What runs where, the results' destination, the CPU's thread count and load, and which
    baselines are left out and why."""
    from pygen.tools import harness as H

    device, by_family = plan["device"], plan["by_family"]
    if args.json:
        out_where = f"JSON lines appended to {Path(args.json)}"
    elif args.no_save:
        out_where = "no JSON lines written (--no-save)"
    else:
        folder = Path(args.results_dir) if args.results_dir else H.results_dir() / meta["device_tag"]
        out_where = f"JSON lines appended to {folder}/<family>.jsonl"
    _print(
        f"pygen bench on {meta['device_name']} [{meta['device_tag']}]: torch {meta['torch']}, "
        f"triton {meta['triton']}, CUDA {meta['cuda']}, git {str(meta['git_sha'])[:12]}"
        f"{' (dirty)' if meta['git_dirty'] else ''}"
    )
    _print(
        f"families {', '.join(by_family)}; dtypes {', '.join(dtype_names)}; modes {', '.join(modes)}; "
        f"{RUN_WORDS[plan['key']]}"
    )
    _print(f"results: {out_where}")
    if device.type == "cpu":
        _print(
            f"threads: {threads} (torch and pygen's OpenMP kernels; --threads N to change); load "
            f"average {meta.get('loadavg_1m')} on {H.cpu_count()} cores at the start"
        )
        _print(f"note: {H.TRITON_CPU_SKIP}; the triton backend is benchmarked on GPUs only")
        load = meta.get("loadavg_1m")
        if load is not None and load > 0.5 * H.cpu_count():
            _print(
                f"note: load average {load:g} on {H.cpu_count()} cores: other processes are "
                f"running, so CPU timings will be noisy (recorded as loadavg_1m in the JSON)"
            )
    compiled = plan["baselines"] is None or "compile" in plan["baselines"]
    if not compiled and args.baseline is None and args.compile is None:
        _print(
            "note: no torch.compile baseline by default on a CPU (each compile of a reference takes "
            "seconds to a minute here; cached by Inductor afterwards); --compile adds it"
        )
    elif (
        compiled
        and not (args.baseline and "compile" in args.baseline)
        and any(not _kernel_backends(c, device, args.backend) for cs in by_family.values() for c in cs)
    ):
        _print(
            f"note: compile(reference) is timed only for ops with a pygen kernel on {device.type}; for "
            f"the others it would only compare the reference with itself (--baseline compile forces it)"
        )
    if compiled:
        import logging

        import torch

        try:  # the reference graph-breaks on data-dependent sizes by design; keep stderr readable
            torch._logging.set_logs(dynamo=logging.ERROR)
        except Exception:  # noqa: BLE001 (older torch: keep the default logging)
            pass


def _bench_ceilings(args, plan, opts, meta):
    """The run's prologue: measured copy bandwidth and the vendor HBM peak (printed), the
    --max-time deadline, and the progress bar over every case. Returns (copy_gbps, peak, progress)."""
    from pygen.tools import harness as H

    device, by_family = plan["device"], plan["by_family"]
    copy_bytes = plan["run"]["copy_bytes"]
    copy_gbps = None if args.no_copy else H.measure_copy_gbps(device, nbytes=copy_bytes)
    peak = H.HBM_PEAK_GBPS.get(meta["device_tag"])
    if peak:
        _print(f"ceiling: {meta['device_tag']} HBM peak {peak / 1000:.1f} TB/s (vendor figure)")
    if copy_gbps:
        _print(
            f"ceiling: measured copy bandwidth {copy_gbps:.1f} GB/s (read+write of a "
            f"{copy_bytes >> 20} MiB tensor copy, {H.copy_ceiling_label(device)}, this run)"
        )
    if args.max_time is not None:
        opts.deadline = time.monotonic() + args.max_time
    progress = None
    if not args.no_progress:
        progress = H.Progress(
            sum(H.count_steps([c], _case_options(c, opts, args)) for cs in by_family.values() for c in cs)
        )
    return copy_gbps, peak, progress


def _run_bench(args, plan, opts, meta, old_handlers):
    """The ceilings, then every family's cases, each family's table printed as it finishes; a
    SIGINT / SIGTERM stops after the running case. Returns (rows, families started, JSON lines
    written per file, the interrupt or None)."""
    from pygen.tools import harness as H

    device, by_family = plan["device"], plan["by_family"]
    copy_gbps = peak = progress = stop = None
    rows: list[dict] = []
    started: list[str] = []
    written: dict[Path, int] = {}
    try:
        try:
            copy_gbps, peak, progress = _bench_ceilings(args, plan, opts, meta)
        except KeyboardInterrupt as exc:
            stop = exc
            _restore(old_handlers)
        for fam, cases in by_family.items():
            if stop is not None:
                break
            started.append(fam)
            fam_rows: list[dict] = []
            shown: list[dict] = []
            messages: list[str] = []
            t0 = time.perf_counter()
            for case in cases:
                case_rows: list[dict] = []
                try:
                    H.run_case(case, _case_options(case, opts, args), progress, messages.append, out=case_rows)
                except KeyboardInterrupt as exc:  # _Interrupted (SIGINT / SIGTERM) or a bare one
                    stop = exc
                    _restore(old_handlers)  # a second Ctrl-C / SIGTERM ends the process at once
                finally:
                    for r in case_rows:
                        r.update(meta)
                        r["copy_gbps"] = copy_gbps
                        r["hbm_peak_gbps"] = peak
                    _save(args, meta, case_rows, written)  # case by case: a cut-short run keeps it
                    fam_rows.extend(case_rows)
                    shown.extend(_with_no_kernel_rows(case, case_rows, device))
                if stop is not None:
                    break
            rows.extend(fam_rows)
            if progress:
                progress.clear()
            _print_family(
                fam,
                fam_rows,
                shown,
                messages,
                cases,
                device,
                copy_gbps,
                peak,
                time.perf_counter() - t0,
                args,
                partial=stop is not None,
            )
            report = getattr(H.load_bench_package().load(fam), "report", None)
            if report is not None and stop is None:
                for line in report(plan["shapes"] == "quick", device):
                    _print(line)
    finally:
        if progress:
            progress.close()
    return rows, started, written, stop


def _bench_outcome(args, by_family, rows, started, written, stop) -> int:
    """The legend, where the JSON lines went, the plot; the exit status (128 + signal when
    interrupted, 2 when nothing could be measured, 1 when a pygen backend disagreed with the
    reference or raised)."""
    from pygen.tools import harness as H

    if any(r.get("median_ms") for r in rows):
        _print()
        _print(H.format_legend(rows))
    for path, n in written.items():
        _print(f"{n} JSON lines appended to {path}")
    if stop is not None:
        signum = getattr(stop, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        left = [f for f in by_family if f not in started]
        _print(
            f"interrupted ({name}): the tables above are what was measured"
            f"{'; not started: ' + ', '.join(left) if left else ''}",
            file=sys.stderr,
        )
        return 128 + signum
    timed = [r for r in rows if r.get("median_ms") is not None]
    if not timed and not any((r.get("reason") or "").startswith("time budget") for r in rows):
        # every implementation was skipped for a reason of this machine or these arguments (e.g.
        # --no-baselines on a CPU for a GPU-only family): a script must not read that as a run
        _print("nothing measured: every implementation was skipped here (the reasons are above)", file=sys.stderr)
        return 2
    if args.plot:
        _print(H.plot(timed, Path(args.plot)))
    failed = [r for r in rows if r["kind"] == "pygen" and r["status"] in ("mismatch", "error")]
    if failed:
        _print(
            f"FAILED: {len(failed)} pygen backend run(s) disagreed with the reference or raised (see the table)",
            file=sys.stderr,
        )
        return 1
    return 0


def _restore(handlers: dict) -> None:
    while handlers:
        sig, h = handlers.popitem()
        signal.signal(sig, h)


def _save(args, meta, case_rows, written: dict[Path, int]) -> None:
    from pygen.tools import harness as H

    timed = [r for r in case_rows if r.get("median_ms") is not None]
    if args.no_save or not timed:
        return
    if args.json:
        path = Path(args.json)
    else:
        folder = Path(args.results_dir) if args.results_dir else H.results_dir() / meta["device_tag"]
        path = folder / f"{timed[0]['family']}.jsonl"
    H.append_jsonl(path, timed)
    written[path] = written.get(path, 0) + len(timed)


def _print_family(fam, rows, shown, messages, cases, device, copy_gbps, peak, seconds, args, partial) -> None:
    """One family's section: skip reasons, notes, then its table (printed as soon as the family
    finishes, or with what it has when the run is interrupted)."""
    from pygen.tools import harness as H

    _print(
        f"\n== {fam}: {len({c.op for c in cases})} op(s), {len(cases)} case(s), "
        f"{H.format_duration(seconds)}{' (INTERRUPTED: partial)' if partial else ''}"
    )
    no_kernel = sorted(
        {c.op for c in cases if device.type == "cpu" and c.backends is not None and "cpu" not in c.backends}
    )
    if no_kernel:
        _print(
            f"{NO_KERNEL.format(dev=device.type).replace('this op', 'these ops')}: {', '.join(no_kernel)} "
            f"(rows are baselines only)"
        )
    skipped, out_of_time = {}, 0
    for r in rows:
        if r["status"] == "skipped" and not (r["kind"] == "pygen" and r["op"] in no_kernel):  # said above
            if r["reason"].startswith("time budget"):
                out_of_time += 1
            else:
                skipped.setdefault((r["backend"], r["reason"]), 0)
    for name, why in skipped:
        _print(f"skipped {name}: {why}")
    if out_of_time:
        _print(f"skipped {out_of_time} runs: --max-time {args.max_time:g}s exhausted")
    for m in dict.fromkeys(messages):
        _print(f"note: {m}")
    if shown:
        _print(
            H.format_table(shown, copy_gbps=copy_gbps if device.type == "cuda" else None, peak_gbps=peak, legend=False)
        )  # the legend once, at the end
    else:
        _print("(nothing measured)")


# ---------------------------------------------------------------------------------------------
# profile
# ---------------------------------------------------------------------------------------------
def cmd_profile(args) -> int:
    from pygen.models import MODELS
    from pygen.tools.profile import profile_model

    if args.model not in MODELS:
        raise BadArgs(f"unknown model {args.model!r}; known: {', '.join(MODELS)}")
    device = _device(args.device)
    if args.backend:
        _check_backend(args.backend, device)
    if args.top < 1:
        raise BadArgs(f"--top {args.top}: give a number of rows >= 1")
    if args.threads is not None and args.threads < 1:
        raise BadArgs(f"--threads {args.threads}: give a number of threads >= 1")
    return profile_model(
        args.model,
        device=device.type,
        backend=args.backend,
        quick=args.quick,
        dtype=args.dtype,
        top=args.top,
        threads=args.threads,
    )


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------
def cmd_inspect(args) -> int:
    from pygen import _backend
    from pygen.tools import inspect as IK

    known = IK.known_families()
    bad = [f for f in dict.fromkeys(args.family) if f not in known]
    if bad:
        raise BadArgs(f"unknown family {', '.join(map(repr, bad))}; known: {', '.join(known)}")
    if args.jobs < 1:
        raise BadArgs(f"--jobs {args.jobs}: give a number >= 1")
    if args.no_triton and args.no_cuda:
        raise BadArgs("--no-triton and --no-cuda together leave nothing to inspect")
    if args.json:  # before the compiles, not after them
        _check_writable("--json", Path(args.json), is_dir=False)
    families = args.family or None
    rows = []
    toolchain = None
    unusable = _backend._triton_error()
    if not args.no_triton and unusable:
        _print(f"The Triton rows are skipped: {unusable}")
    elif not args.no_triton:
        toolchain = IK.triton_toolchain()
        ptxas = toolchain.get("ptxas")
        _print(
            f"Triton {toolchain.get('triton') or '(not installed)'} compiles the Triton rows"
            + (f" (ptxas {toolchain.get('ptxas_version') or '?'}: {ptxas})" if ptxas else "")
        )
        rows += IK.triton_rows(families)
    if not args.no_cuda:
        nvcc = IK.find_nvcc()
        if nvcc is None:
            _print("nvcc not found (CUDA_HOME, /usr/local/cuda, PATH): the .cu rows are skipped")
        else:
            rows += IK.nvcc_rows(families, nvcc=nvcc, jobs=args.jobs, use_cache=not args.no_cache)
    _print(IK.format_rows(rows))
    bad = [r for r in rows if r.get("error")]
    spills = [r for r in rows if (r.get("spill_stores") or 0) + (r.get("spill_loads") or 0) > 0]
    _print(f"{len(rows)} kernels, {len(bad)} failed to compile, {len(spills)} spill")
    if args.json:
        import json

        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(IK.report_json(rows, toolchain), indent=1, default=str) + "\n")
        _print(f"wrote {path}")
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pygen", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", metavar="{info,bench,profile,inspect}")

    s = sub.add_parser("info", help="versions, devices and backend availability")
    s.set_defaults(func=cmd_info)

    _add_bench(sub)
    _add_profile(sub)
    _add_inspect(sub)
    return p


def _add_bench(sub) -> None:
    s = sub.add_parser(
        "bench",
        help="check then time every op, backend and baseline",
        description=BENCH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("family", nargs="*", help="op families (default: all)")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    s.add_argument(
        "--backend",
        action="append",
        choices=["cuda", "triton", "cpu"],
        help="pygen backends to time (repeatable; default: every available one); one that "
        "cannot run on the device is an error",
    )
    s.add_argument(
        "--baseline",
        action="append",
        metavar="NAME",
        help="baselines to time (repeatable; default: every importable one). Names as in the "
        "result tables: reference, compile, torchvision, dense masked, D passes (dense masked), "
        "step loop, flashmla, vllm-triton, sglang-triton, transformers:eager, "
        "transformers:grouped_mm, vllm:fused_experts, torch.matmul, torch._scaled_mm, ...",
    )
    s.add_argument(
        "--no-baselines", dest="baseline", action="store_const", const=[], help="time the pygen backends only"
    )
    s.add_argument(
        "--dtype",
        action="append",
        choices=sorted(["float32", "float16", "bfloat16", "float64"]),
        help="repeatable; default float32 on CPU, float32 and bfloat16 on GPU",
    )
    s.add_argument(
        "--mode", action="append", choices=["fwd", "bwd", "fwd+bwd"], help="repeatable; default fwd and fwd+bwd"
    )
    s.add_argument("--op", action="append", help="only these ops (repeatable), e.g. roi_align")
    size = s.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small shapes and the shortest timing (a smoke test)")
    size.add_argument(
        "--full",
        action="store_true",
        help="model-size shapes (the default on a GPU; on a CPU, the CPU-scaled model "
        "sizes: tens of minutes on 2 cores)",
    )
    s.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time torch.compile of the reference as a baseline, for the ops with a pygen "
        "kernel on the device (default: on, except for the CPU default and --quick "
        "runs, where the first compiles take minutes)",
    )
    _add_bench_output_args(s)
    s.set_defaults(func=cmd_bench)


def _add_bench_output_args(s) -> None:
    """Where results go, the plot, and the run's timing options."""
    dest = s.add_mutually_exclusive_group()
    dest.add_argument(
        "--results-dir",
        metavar="DIR",
        help="append JSON lines to DIR/<family>.jsonl (default: $PYGEN_RESULTS_DIR/<device>, "
        "else ~/.cache/pygen/bench/<device>). bench/results/<device> is the committed "
        "results folder: write there only for a deliberate run you mean to commit",
    )
    dest.add_argument("--json", metavar="PATH", help="append every JSON line to this one file instead")
    dest.add_argument("--no-save", action="store_true", help="write no JSON lines")
    s.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    s.add_argument("--no-cudagraph", action="store_true", help="never time under CUDA graphs")
    s.add_argument("--no-copy", action="store_true", help="skip the copy-bandwidth measurement")
    s.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch (and pygen OpenMP) threads for CPU timing (default on a CPU: 1, robust on a "
        "shared machine; printed, and recorded as 'threads' in the JSON)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    s.add_argument(
        "--max-time",
        type=float,
        metavar="S",
        help="start no new case/dtype after S seconds (the rest is reported as skipped)",
    )


def _add_profile(sub) -> None:
    s = sub.add_parser("profile", help="a model with reference ops vs pygen ops")
    s.add_argument("model", help="a pygen.models name: faster_rcnn_roi_head, rfcn_head, ...")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    s.add_argument(
        "--backend",
        choices=["cuda", "triton", "cpu"],
        help="pygen backend for the pygen run (default: automatic choice)",
    )
    s.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    s.add_argument("--quick", action="store_true", help="small shapes")
    s.add_argument("--top", type=int, default=12, help="rows of the profiler table")
    s.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch (and pygen OpenMP) threads on a CPU (default: 1, as pygen bench)",
    )
    s.set_defaults(func=cmd_profile)


def _add_inspect(sub) -> None:
    s = sub.add_parser("inspect", help="offline sm_90 compile: registers, spills, smem, wgmma")
    s.add_argument("family", nargs="*", help="op families (default: all)")
    s.add_argument("--no-triton", action="store_true", help="skip the Triton kernels")
    s.add_argument("--no-cuda", action="store_true", help="skip the .cu files")
    s.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel nvcc processes")
    s.add_argument(
        "--no-cache",
        action="store_true",
        help="recompile the .cu files even if ~/.cache/pygen/inspect has this exact source",
    )
    s.add_argument(
        "--json",
        metavar="PATH",
        help="also write the rows and the Triton version / ptxas that compiled them as JSON "
        "(docs/inspect/triton-<version>.json are such files)",
    )
    s.set_defaults(func=cmd_inspect)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BadArgs as exc:
        _print(f"pygen {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
