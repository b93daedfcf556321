"""The ``pygen`` command (also ``python -m pygen``).

    pygen info                       versions, devices, which backend runs where and why not
    pygen bench [FAMILY ...]         check then time every op x backend x baseline (bench/)
    pygen profile MODEL              a pygen.models model with reference ops vs pygen ops
    pygen inspect [FAMILY ...]       offline sm_90 compile of every Triton kernel and .cu file:
                                     registers, spills, shared memory, wgmma

Each subcommand's ``--help`` lists its options. Exit status: 0 on success, 1 when a pygen
backend failed its correctness check (bench) or a kernel failed to compile (inspect), 2 for
bad arguments.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path


def _print(*a, **k):
    print(*a, **k, flush=True)


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
    from pygen.bench_harness import cpu_count, cpu_name, triton_version
    from pygen.inspect_kernels import find_nvcc, nvcc_version

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
    env = {k: os.environ[k] for k in ("PYGEN_BACKEND", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")
           if k in os.environ}
    if env:
        _print("env      " + " ".join(f"{k}={v}" for k, v in env.items()))

    _print("\ndevices")
    devices = ["cpu"]
    _print(f"  cpu      {cpu_name()}, {cpu_count()} cores, torch threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            _print(f"  cuda:{i}   {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
                   f"{p.multi_processor_count} SMs")
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
    for dev in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        _print(f"  auto order on {dev}: {', '.join(_backend.available_backends(dev))}")
    return 0


# ---------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    import torch

    from pygen import bench_harness as H

    pkg = H.load_bench_package()
    families = args.family or list(pkg.FAMILIES)
    for f in families:
        if f not in pkg.FAMILIES:
            _print(f"pygen bench: unknown family {f!r}; known: {', '.join(pkg.FAMILIES)}", file=sys.stderr)
            return 2
    device = H.resolve_device(args.device)
    dtype_names = args.dtype or (["float32"] if device.type == "cpu" else ["float32", "bfloat16"])
    dtypes = [H.DTYPES[d] for d in dtype_names]
    modes = args.mode or ["fwd", "fwd+bwd"]
    opts = H.BenchOptions(device=device, dtypes=dtypes, modes=modes, backends=args.backend,
                          baselines=args.baseline,
                          cpu_budget_s=0.2 if args.quick else 1.0,
                          cpu_min_reps=3 if args.quick else 5,
                          allow_cudagraph=not args.no_cudagraph)
    meta = H.env_info(device)
    _print(f"pygen bench on {meta['device_name']} [{meta['device_tag']}]: torch {meta['torch']}, "
           f"triton {meta['triton']}, CUDA {meta['cuda']}, git {str(meta['git_sha'])[:12]}"
           f"{' (dirty)' if meta['git_dirty'] else ''}")
    _print(f"dtypes {', '.join(dtype_names)}; modes {', '.join(modes)}; "
           f"{'quick shapes' if args.quick else 'default shapes'}")
    if device.type == "cpu":
        _print(f"note: {H.TRITON_CPU_SKIP}; the triton backend is benchmarked on GPUs only")
        load = meta.get("loadavg_1m")
        if load is not None and load > 0.5 * H.cpu_count():
            _print(f"note: load average {load:g} on {H.cpu_count()} cores: other processes are "
                   f"running, so CPU timings will be noisy (recorded as loadavg_1m in the JSON)")

    copy_gbps = None if args.no_copy else H.measure_copy_gbps(
        device, nbytes=(1 << 26) if args.quick else (1 << 30))
    peak = H.HBM_PEAK_GBPS.get(meta["device_tag"])
    if peak:
        _print(f"ceiling: {meta['device_tag']} HBM peak {peak / 1000:.1f} TB/s (vendor figure)")
    if copy_gbps:
        _print(f"ceiling: measured copy bandwidth {copy_gbps:.1f} GB/s (read+write of a "
               f"{'64 MiB' if args.quick else '1 GiB'} tensor copy, this run)")

    all_cases = []
    for fam in families:
        cs = pkg.load(fam).cases(quick=args.quick, device=device)
        if args.op:
            cs = [c for c in cs if c.op in args.op]
        all_cases.extend(cs)
    if not all_cases:
        _print("pygen bench: no case matches the filters", file=sys.stderr)
        return 2
    if args.baseline:
        known = {"reference", "compile"} | {name for c in all_cases for name in c.baselines}
        unknown = [b for b in args.baseline if b not in known]
        if unknown:
            _print(f"pygen bench: unknown baseline {', '.join(map(repr, unknown))} for these cases; known: "
                   f"{', '.join(sorted(known))}", file=sys.stderr)
            return 2

    if args.baseline is None or "compile" in args.baseline:
        import logging
        try:  # the reference graph-breaks on data-dependent sizes by design; keep stderr readable
            torch._logging.set_logs(dynamo=logging.ERROR)
        except Exception:
            pass
    if args.max_time is not None:
        opts.deadline = time.monotonic() + args.max_time
    progress = H.Progress(H.count_steps(all_cases, opts)) if not args.no_progress else None
    messages: list[str] = []
    rows: list[dict] = []
    written: dict[Path, int] = {}

    def save(case_rows):
        # appended case by case, so a run cut short by a timeout keeps what it measured
        timed = [r for r in case_rows if r.get("median_ms") is not None]
        if args.no_save or not timed:
            return
        path = Path(args.json) if args.json else H.results_dir() / meta["device_tag"] / f"{timed[0]['family']}.jsonl"
        H.append_jsonl(path, timed)
        written[path] = written.get(path, 0) + len(timed)

    try:
        for case in all_cases:
            case_rows = H.run_case(case, opts, progress, messages.append)
            for r in case_rows:
                r.update(meta)
                r["copy_gbps"] = copy_gbps
                r["hbm_peak_gbps"] = peak
            save(case_rows)
            rows.extend(case_rows)
    finally:
        if progress:
            progress.close()

    skipped, out_of_time = {}, 0
    for r in rows:
        if r["status"] == "skipped":
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
    shown = [r for r in rows if r["status"] != "skipped"]
    _print()
    _print(H.format_table(shown, copy_gbps=copy_gbps if device.type == "cuda" else None,
                          peak_gbps=peak))
    _print("ratios: baseline median / impl median in this run (> 1 = faster than the baseline); "
           "GB/s from the byte model in bench/<family>.py")
    for path, n in written.items():
        _print(f"{n} JSON lines appended to {path}")
    timed = [r for r in rows if r.get("median_ms") is not None]
    if args.plot:
        _print(H.plot(timed, Path(args.plot)))

    failed = [r for r in rows if r["kind"] == "pygen" and r["status"] in ("mismatch", "error")]
    if failed:
        _print(f"FAILED: {len(failed)} pygen backend run(s) disagreed with the reference or raised "
               f"(see the table)", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# profile
# ---------------------------------------------------------------------------------------------
def cmd_profile(args) -> int:
    from pygen.models import MODELS, profile_model
    if args.model not in MODELS:
        _print(f"pygen profile: unknown model {args.model!r}; known: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    return profile_model(args.model, device=args.device, backend=args.backend, quick=args.quick,
                         dtype=args.dtype, top=args.top)


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------
def cmd_inspect(args) -> int:
    from pygen import inspect_kernels as IK
    families = args.family or None
    rows = []
    if not args.no_triton:
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
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pygen", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{info,bench,profile,inspect}")

    s = sub.add_parser("info", help="versions, devices and backend availability")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("bench", help="check then time every op, backend and baseline")
    s.add_argument("family", nargs="*", help="op families (default: all)")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    s.add_argument("--backend", action="append", choices=["cuda", "triton", "cpu"],
                   help="pygen backends to time (repeatable; default: every available one)")
    s.add_argument("--baseline", action="append", metavar="NAME",
                   help="baselines to time (repeatable; default: every importable one). Names as in the "
                        "result tables: reference, compile, torchvision, dense masked, D passes (dense masked), "
                        "step loop, flashmla, vllm-triton, sglang-triton, transformers:eager, "
                        "transformers:grouped_mm, vllm:fused_experts, torch.matmul, torch._scaled_mm, ...")
    s.add_argument("--no-baselines", dest="baseline", action="store_const", const=[],
                   help="time the pygen backends only")
    s.add_argument("--dtype", action="append", choices=sorted(["float32", "float16", "bfloat16", "float64"]),
                   help="repeatable; default float32 on CPU, float32 and bfloat16 on GPU")
    s.add_argument("--mode", action="append", choices=["fwd", "bwd", "fwd+bwd"],
                   help="repeatable; default fwd and fwd+bwd")
    s.add_argument("--op", action="append", help="only these ops (repeatable), e.g. roi_align")
    s.add_argument("--quick", action="store_true", help="small shapes and short timing (smoke test)")
    s.add_argument("--json", metavar="PATH", help="append JSON lines here instead of "
                   "bench/results/<device>/<family>.jsonl")
    s.add_argument("--no-save", action="store_true", help="write no JSON lines")
    s.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    s.add_argument("--no-cudagraph", action="store_true", help="never time under CUDA graphs")
    s.add_argument("--no-copy", action="store_true", help="skip the copy-bandwidth measurement")
    s.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    s.add_argument("--max-time", type=float, metavar="S",
                   help="start no new case/dtype after S seconds (the rest is reported as skipped)")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("profile", help="a model with reference ops vs pygen ops")
    s.add_argument("model", help="a pygen.models name: faster_rcnn_roi_head, rfcn_head, ...")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    s.add_argument("--backend", choices=["cuda", "triton", "cpu"],
                   help="pygen backend for the pygen run (default: automatic choice)")
    s.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    s.add_argument("--quick", action="store_true", help="small shapes")
    s.add_argument("--top", type=int, default=12, help="rows of the profiler table")
    s.set_defaults(func=cmd_profile)

    s = sub.add_parser("inspect", help="offline sm_90 compile: registers, spills, smem, wgmma")
    s.add_argument("family", nargs="*", help="op families (default: all)")
    s.add_argument("--no-triton", action="store_true", help="skip the Triton kernels")
    s.add_argument("--no-cuda", action="store_true", help="skip the .cu files")
    s.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel nvcc processes")
    s.add_argument("--no-cache", action="store_true",
                   help="recompile the .cu files even if ~/.cache/pygen/inspect has this exact source")
    s.set_defaults(func=cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
