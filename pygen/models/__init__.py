"""Compact standard models from the seed papers, gpt-fast style (a config dataclass and plain
modules), used by ``pygen profile`` and as end-to-end tests of the drop-in modules.

    from pygen.models import build, set_backend
    model, cfg = build("faster_rcnn_roi_head", quick=True)
    out = model(*model.example_inputs(cfg))
"""
from __future__ import annotations

import sys

import torch

from .detection import (MODELS, FasterRCNNHeadConfig, FasterRCNNRoIHead, RFCNHead,  # noqa: F401
                        RFCNHeadConfig, build, random_proposals, set_backend)
from .flows import MODELS as _FLOW_MODELS, Glow, GlowConfig, RealNVP2D, RealNVPImage  # noqa: F401,E402
MODELS.update(_FLOW_MODELS)
from .made import MODELS as _MADE_MODELS, MADE, MAF, IAF, BinaryMADE, GaussianMADE  # noqa: F401,E402
MODELS.update(_MADE_MODELS)
from .deepseek import MODELS as _DEEPSEEK_MODELS, DeepSeekV3Block, DeepSeekV3Config, DeepSeekV3LM  # noqa: F401,E402
MODELS.update(_DEEPSEEK_MODELS)


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _run_for(model, inputs):
    def call():
        with torch.no_grad():
            return model(*inputs)
    return call


def profile_model(name: str, device: str | None = None, backend: str | None = None, quick: bool = False,
                  dtype: str = "float32", top: int = 12, reps_budget_s: float | None = None,
                  stream=None) -> int:
    """Run model ``name`` with reference ops and with pygen ops (same weights, same inputs):
    check the outputs agree, print the end-to-end speedup (median of repeated forward passes)
    and the top ops by self time from torch.profiler for both runs. Returns an exit status."""
    from torch.profiler import ProfilerActivity, profile

    from .. import _backend
    from .. import bench_harness as H

    out = stream or sys.stdout

    def say(*a):
        print(*a, file=out, flush=True)

    dev = H.resolve_device(device)
    dt = H.DTYPES[dtype]
    model, cfg = build(name, quick=quick)
    model = model.to(device=dev, dtype=dt).eval()
    inputs = model.example_inputs(cfg, dev, dt)
    if backend is not None:
        ok, why = _backend.backend_status(backend, dev)
        if not ok:
            say(f"pygen profile: backend {backend!r} is unavailable on {dev.type}: {why}")
            return 2
    say(f"pygen profile {name}{' (quick)' if quick else ''} on {H.device_name(dev)}, {dtype}; "
        f"pygen ops: {'backend ' + backend if backend else 'automatic backend choice per op'}")
    say(f"config: {cfg}")

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
    say(f"outputs: max abs difference pygen vs reference {max(errs, default=0.0):.3g} "
        f"({'agree' if agree else 'DISAGREE'} within {tol:g} x (1 + max|ref| = {scale:.3g}))")

    budget = reps_budget_s if reps_budget_s is not None else (0.3 if quick else 2.0)

    def timeit(b, call):
        set_backend(model, b)
        if dev.type == "cuda":
            return H.time_cuda(call, allow_cudagraph=False)
        return H.time_cpu(call, min_reps=3, budget_s=budget)

    t_ref = timeit("reference", ref_call)
    t_pg = timeit(backend, pg_call)
    say(f"reference ops: median {t_ref.median_ms:.3f} ms (p20 {t_ref.p20_ms:.3f}, p80 {t_ref.p80_ms:.3f})")
    say(f"pygen ops:     median {t_pg.median_ms:.3f} ms (p20 {t_pg.p20_ms:.3f}, p80 {t_pg.p80_ms:.3f})")
    say(f"end-to-end speedup: {t_ref.median_ms / t_pg.median_ms:.2f}x")

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    sort_key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
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
            say("pygen kernel ops that ran: " + (", ".join(kernels) if kernels else
                "none (every op used the reference: no kernel backend for this model's ops here)"))
    set_backend(model, backend)
    return 0 if agree else 1
