"""DeepSeekMoE benchmarks: routing (+ alignment), the fused expert MLP and the whole MoE layer.

Default shapes (``cases(quick=False)`` on a CUDA device)
--------------------------------------------------------
DeepSeek-V3 (config of deepseek-ai/DeepSeek-V3, also transformers' DeepseekV3Config defaults):
hidden H = 7168, moe_intermediate I = 2048, E = 256 routed experts, top-k = 8, 8 groups of which
4 are kept, 1 shared expert, routed_scaling_factor 2.5, sigmoid scoring with a correction bias;
T = 1, 64, 512 and 8192 tokens (decode to prefill).
    moe_route           router logits [T, E] float32 -> (ids, weights)
    moe_route+align     the same plus moe_align(ids, E, block 64): what a fused-MoE launch needs
    fused_moe           x [T, H], w1 [E, 2I, H], w2 [E, H, I], routing from moe_route on random
                        logits (realistic expert spread)
    moe_layer           pygen.nn.MoE (router, routed experts, shared expert) vs transformers'
                        DeepseekV3MoE on the very same weight tensors (T = 1, 64, 512 only: the
                        reference loop over 256 experts at 8192 tokens would dominate the run)

On CPU (``cases(device="cpu")``) routing keeps the DeepSeek-V3 expert dims (routing cost does not
depend on H) and all four token counts; fused_moe and the layer are scaled down to the issue's CPU
scale point, H = 1024, I = 256, 256 experts top-8 (8 groups / 4), at T = 64 and 2048 (the full
expert weights are 45 GB in float32). ``cases(quick=True)``: H = 64, I = 32, 16 experts top-4,
4 groups / 2, T = 1 and 37 (a few seconds in total; the Triton interpreter is never timed).

Implementations
---------------
pygen:<backend>   the public ops with backend=<backend>; for moe_route+align the routing runs on
                  the same backend when moe_route has it, else on pygen's automatic choice (e.g. the
                  cpu row aligns with csrc and routes with the best CPU routing pygen has)
reference         pygen.ref through the ops (eager PyTorch: the loop over experts for fused_moe)
compile(reference)  torch.compile of the reference
transformers:eager        DeepseekV3Experts' own loop (fused_moe) / DeepseekV3MoE eager (layer)
transformers:grouped_mm   transformers.integrations.moe.grouped_mm_experts_forward (torch._grouped_mm
                          or its fallback), transformers' default experts implementation
torch.topk (transformers' math)  moe_route only: transformers' DeepseekV3TopkRouter sequence of
                          torch.topk calls on the logits (pygen.ref.moe_route(tie_break="torch"))
vllm:fused_experts / vllm:grouped_topk   when vLLM is importable (skipped with the reason otherwise)

Outputs compared: routing rows are sorted by expert id before comparison (the set of experts and
their weights is what matters; transformers returns them unsorted), alignment outputs as is
(the order inside an expert's segment is specified: ascending slot).

Byte model (GB/s column; a model of the traffic, not a hardware counter)
-----------------------------------------------------------------------
Eb = bytes per element of x and the expert weights, A = number of experts that receive at least
one token (counted from the routing of each case), S = T*k slots, P = S + E*(B-1) aligned length.
    moe_route        fwd  4*T*E (logits) + 4*E (bias) + 8*S (ids, weights)
                     bwd  4*S*2 (grad w, ids) + 4*T*E*2 (logits, grad logits)
    moe_route+align  fwd  route fwd + 4*S (ids) + 4*P + 4*ceil(P/B) + 4; bwd as moe_route
    fused_moe        fwd  Eb*(2*T*H + A*3*I*H) + 8*S              (x, out, touched w1 and w2)
                     bwd  Eb*(3*T*H + 2*A*3*I*H + 3*S*I) + 12*S   (g, x, dx; w read + dw written;
                                                                    saved gate/up/hidden)
    moe_layer        fused_moe + Eb*3*Is*H (shared expert, Is = I*n_shared) + 4*E*H (gate)
                     + 4*T*E (logits); bwd: the weights read once, no dW (the layer's weights
                     are frozen, x is the only leaf: dX only)
FLOPs (shape dict ``gflop_fwd``): fused_moe 6*S*I*H (gate/up GEMM 4*S*I*H, down 2*S*I*H);
backward 2x that (dX and dW); the layer adds 6*T*Is*H + 2*T*E*H, and its backward is 1x (dX
only). H200 ceilings: 989 TFLOP/s dense bf16, 4.8 TB/s HBM; at T <= 64 fused_moe is bound by
streaming the A touched experts' weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from pygen.ref import moe as ref
from pygen.tools.harness import Case, Inputs

FAMILY = "moe"
ALIGN_BLOCK = 64


@dataclass(frozen=True)
class MoEShape:
    hidden: int = 7168
    inter: int = 2048
    experts: int = 256
    top_k: int = 8
    n_group: int = 8
    topk_group: int = 4
    n_shared: int = 1
    scale: float = 2.5

    def as_dict(self) -> dict:
        return {
            "H": self.hidden,
            "I": self.inter,
            "E": self.experts,
            "k": self.top_k,
            "groups": f"{self.n_group}/{self.topk_group}",
            "shared": self.n_shared,
        }


DSV3 = MoEShape()
CPU_SCALED = MoEShape(hidden=1024, inter=256)
QUICK = MoEShape(hidden=64, inter=32, experts=16, top_k=4, n_group=4, topk_group=2)
TOKENS = {"gpu": (1, 64, 512, 8192), "cpu_route": (1, 64, 512, 8192), "cpu_experts": (64, 2048), "quick": (1, 37)}
LAYER_MAX_TOKENS = 512


def _ops():
    import pygen.ops.moe as ops_moe

    return ops_moe


def _randn(shape, seed: int, device, dtype, scale: float = 1.0) -> torch.Tensor:
    # drawn on the bench device in the bench dtype: the DeepSeek-V3 expert weights are 11.3 G
    # values (minutes to draw on the host, and twice the memory through a float32 copy)
    g = torch.Generator(device=device).manual_seed(seed)
    out = torch.randn(shape, generator=g, device=device, dtype=dtype)
    return out.mul_(scale) if scale != 1.0 else out


def _with_bwd(fwd: int, bwd: int, mode: str) -> int:
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _route_kw(s: MoEShape) -> dict:
    return dict(
        scoring="sigmoid",
        n_group=s.n_group,
        topk_group=s.topk_group,
        norm_topk_prob=True,
        routed_scaling_factor=s.scale,
    )


def _by_expert(ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[T, 2k]: each row's expert ids ascending (as floats, exact below 2^24) and their weights."""
    ids_s, order = torch.sort(ids.long(), dim=1)
    return torch.cat([ids_s.to(w.dtype), w.gather(1, order)], 1)


@cache
def _has(op: str, backend: str, device_type: str) -> bool:
    """Whether pygen.ops.moe.<op> runs with ``backend`` on this device type (probed once on a
    tiny input, so the table follows what the ops implement)."""
    try:
        z = dict(device=device_type)
        if op == "moe_route":
            _ops().moe_route(torch.zeros(1, 4, **z), 1, backend=backend)
        elif op == "moe_align":
            _ops().moe_align(torch.zeros(1, 1, dtype=torch.int32, **z), 4, 4, backend=backend)
        else:
            _ops().fused_moe(
                torch.zeros(1, 2, **z),
                torch.zeros(1, 2, 2, **z),
                torch.zeros(1, 2, 1, **z),
                torch.ones(1, 1, **z),
                torch.zeros(1, 1, dtype=torch.int32, **z),
                backend=backend,
            )
        return True
    except Exception:
        return False


def _backends(op: str, device) -> tuple[str, ...]:
    """The kernel backends a case lists: triton always (the harness reports it skipped on CPU),
    cpu / cuda when the op has them on the bench device (the layer follows fused_moe)."""
    dev = torch.device(device).type
    native = "cuda" if dev == "cuda" else "cpu"
    return ("triton",) + ((native,) if _has(op, native, dev) else ())


def _route_backend(b: str, device: torch.device) -> str | None:
    if b in ("reference", "triton") or _has("moe_route", b, device.type):
        return b
    return None  # pygen's automatic choice on this device


# ---- routing -------------------------------------------------------------------------------------
def _route_inputs(s: MoEShape, t: int):
    def make(device, dtype) -> Inputs:
        # router logits are float32 in DeepSeek-V3 whatever the model dtype
        logits = _randn((t, s.experts), 1, device, torch.float32)
        bias = _randn((s.experts,), 2, device, torch.float32, 0.1)
        return Inputs({"logits": logits, "bias": bias}, [logits], None)

    return make


def _route_cases(s: MoEShape, tokens, tag: str, device) -> list[Case]:
    return [c for t in tokens for c in _route_cases_at(s, t, tag, device)]


def _route_runs(s: MoEShape):
    """(pygen routing, pygen routing + alignment, and the references of both), each flattened to
    one tensor per call (the harness compares one output)."""

    def route(I, b):
        ids, w = _ops().moe_route(
            I.logits,
            s.top_k,
            e_score_correction_bias=I.bias,
            backend=_route_backend(b, I.logits.device),
            **_route_kw(s),
        )
        return ids, w

    def run_route(I, b):
        return _by_expert(*route(I, b)).flatten()

    def run_align(I, b):
        ids, w = route(I, b)
        sorted_ids, expert_ids, n = _ops().moe_align(ids, s.experts, ALIGN_BLOCK, backend=b)
        return torch.cat([_by_expert(ids, w).flatten(), sorted_ids.float(), expert_ids.float(), n.float()])

    def ref_route(logits, bias):
        return _by_expert(*ref.moe_route(logits, s.top_k, e_score_correction_bias=bias, **_route_kw(s))).flatten()

    def ref_align(logits, bias):
        ids, w = ref.moe_route(logits, s.top_k, e_score_correction_bias=bias, **_route_kw(s))
        a, e_ids, n = ref.moe_align(ids, s.experts, ALIGN_BLOCK)
        return torch.cat([_by_expert(ids, w).flatten(), a.float(), e_ids.float(), n.float()])

    return run_route, run_align, ref_route, ref_align


def _route_cases_at(s: MoEShape, t: int, tag: str, device) -> list[Case]:
    shape = {**s.as_dict(), "T": t, "block": ALIGN_BLOCK}
    base = _route_inputs(s, t)
    run_route, run_align, ref_route, ref_align = _route_runs(s)

    def make(device, dtype, align=False):
        inp = base(device, dtype)
        width = 2 * s.top_k * t
        if align:
            cap = t * s.top_k + s.experts * (ALIGN_BLOCK - 1)
            width += cap + math.ceil(cap / ALIGN_BLOCK) + 1
        inp.grad_out = _randn((width,), 3, device, torch.float32)
        return inp

    def nbytes_route(I, mode):
        slots = t * s.top_k
        return _with_bwd(4 * t * s.experts + 4 * s.experts + 8 * slots, 8 * slots + 8 * t * s.experts, mode)

    def nbytes_align(I, mode):
        slots = t * s.top_k
        cap = slots + s.experts * (ALIGN_BLOCK - 1)
        extra = 4 * slots + 4 * cap + 4 * math.ceil(cap / ALIGN_BLOCK) + 4
        return nbytes_route(I, mode) + (extra if mode != "bwd" else 0)

    args = lambda I: (I.logits, I.bias)
    return [
        Case(
            FAMILY,
            "moe_route",
            f"{tag}-t{t}",
            shape,
            make,
            run_route,
            (ref_route, args),
            nbytes_route,
            "fwd 4TE + 4E + 8Tk; bwd 8Tk + 8TE",
            baselines={"torch.topk (transformers' math)": _topk_route(s), "vllm:grouped_topk": _vllm_grouped_topk(s)},
            backends=_backends("moe_route", device),
        ),
        Case(
            FAMILY,
            "moe_route+align",
            f"{tag}-t{t}",
            shape,
            (lambda d, dt: make(d, dt, align=True)),
            run_align,
            (ref_align, args),
            nbytes_align,
            "route + 4Tk + 4P + 4ceil(P/B) + 4 (P = Tk + E(B-1), B = 64)",
            backends=_backends("moe_align", device),
        ),
    ]


def _topk_route(s: MoEShape):
    """transformers' DeepseekV3TopkRouter sequence of torch.topk calls on the logits (pygen.ref's
    tie_break="torch" path; the router's own forward would add the [T, H] x [H, E] GEMM)."""

    def factory():
        def run(I):
            return _by_expert(
                *ref.moe_route(I.logits, s.top_k, e_score_correction_bias=I.bias, tie_break="torch", **_route_kw(s))
            ).flatten()

        return run

    return factory


def _vllm_grouped_topk(s: MoEShape):
    def factory():
        from vllm.model_executor.layers.fused_moe.fused_moe import grouped_topk  # noqa: F401 (probe: the vLLM baseline needs it)

        def run(I):
            # grouped_topk takes hidden_states only for its token count
            w, ids = grouped_topk(
                I.logits,
                I.logits,
                s.top_k,
                True,
                s.n_group,
                s.topk_group,
                scoring_func="sigmoid",
                routed_scaling_factor=s.scale,
                e_score_correction_bias=I.bias,
            )
            return _by_expert(ids, w.float()).flatten()

        return run

    return factory


# ---- fused_moe -----------------------------------------------------------------------------------
def _expert_inputs(s: MoEShape, t: int, seed: int = 10):
    def make(device, dtype) -> Inputs:
        x = _randn((t, s.hidden), seed, device, dtype)
        w1 = _randn((s.experts, 2 * s.inter, s.hidden), seed + 1, device, dtype, s.hidden**-0.5)
        w2 = _randn((s.experts, s.hidden, s.inter), seed + 2, device, dtype, s.inter**-0.5)
        logits = _randn((t, s.experts), seed + 3, device, torch.float32)
        bias = _randn((s.experts,), seed + 4, device, torch.float32, 0.1)
        ids, w = ref.moe_route(logits, s.top_k, e_score_correction_bias=bias, **_route_kw(s))
        active = int(torch.unique(ids).numel())
        grad = _randn((t, s.hidden), seed + 5, device, dtype)
        return Inputs(
            {"x": x, "w1": w1, "w2": w2, "ids": ids, "w": w.contiguous(), "active": active}, [x, w1, w2], grad
        )

    return make


def _experts_namespace(I, s: MoEShape, impl: str):
    """What transformers' experts forwards read from their module, around the case's tensors (so
    the gradients land in the case's leaves)."""
    from transformers.integrations import moe as hf_moe

    ns = SimpleNamespace(
        gate_up_proj=I.w1,
        down_proj=I.w2,
        num_experts=s.experts,
        act_fn=F.silu,
        has_gate=True,
        has_bias=False,
        is_transposed=False,
        is_concatenated=True,
        has_post_expert_norm=False,
        _is_expert_parallel=False,
        config=SimpleNamespace(_experts_implementation=impl),
    )
    ns._apply_gate = lambda gu: hf_moe._default_apply_gate(ns, gu)
    return ns


def _hf_experts(impl: str, s: MoEShape):
    def factory():
        from transformers.integrations import moe as hf_moe
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Experts

        fn = DeepseekV3Experts.forward.__wrapped__ if impl == "eager" else hf_moe.ALL_EXPERTS_FUNCTIONS[impl]

        def run(I):
            return fn(_experts_namespace(I, s, impl), I.x, I.ids.long(), I.w)

        return run

    return factory


def _vllm_fused_experts():
    def factory():
        from vllm.model_executor.layers.fused_moe import fused_experts

        def run(I):
            return fused_experts(I.x, I.w1, I.w2, I.w, I.ids, inplace=False)

        return run

    return factory


def _fused_bytes(s: MoEShape, t: int, weight_grads: bool = True):
    """``weight_grads``: the backward writes dW (the fused_moe case trains w1 / w2; the layer case's
    weights are frozen, so its backward reads them once and writes none)."""

    def nbytes(I, mode):
        eb = I.x.element_size()
        slots = t * s.top_k
        wbytes = I.active * 3 * s.inter * s.hidden * eb
        fwd = eb * 2 * t * s.hidden + wbytes + 8 * slots
        bwd = eb * (3 * t * s.hidden + 3 * slots * s.inter) + (2 if weight_grads else 1) * wbytes + 12 * slots
        return _with_bwd(fwd, bwd, mode)

    return nbytes


def _fused_cases(s: MoEShape, tokens, tag: str, device) -> list[Case]:
    out = []
    for t in tokens:
        shape = {**s.as_dict(), "T": t, "gflop_fwd": 6 * t * s.top_k * s.inter * s.hidden / 1e9}
        out.append(
            Case(
                FAMILY,
                "fused_moe",
                f"{tag}-t{t}",
                shape,
                _expert_inputs(s, t),
                lambda I, b: _ops().fused_moe(I.x, I.w1, I.w2, I.w, I.ids, backend=b),
                (lambda x, w1, w2, w, ids: ref.fused_moe(x, w1, w2, w, ids), lambda I: (I.x, I.w1, I.w2, I.w, I.ids)),
                _fused_bytes(s, t),
                "fwd Eb(2TH + 3AIH) + 8Tk; bwd Eb(3TH + 3TkI) + 2*3AIH*Eb + 12Tk",
                baselines={
                    "transformers:eager": _hf_experts("eager", s),
                    "transformers:grouped_mm": _hf_experts("grouped_mm", s),
                    "vllm:fused_experts": _vllm_fused_experts(),
                },
                backends=_backends("fused_moe", device),
            )
        )
    return out


# ---- the layer -----------------------------------------------------------------------------------
def _layer_fields(s: MoEShape) -> dict:
    return dict(
        hidden_size=s.hidden,
        moe_intermediate_size=s.inter,
        n_routed_experts=s.experts,
        num_experts_per_tok=s.top_k,
        n_group=s.n_group,
        topk_group=s.topk_group,
        n_shared_experts=s.n_shared,
        routed_scaling_factor=s.scale,
    )


def _layer_inputs(s: MoEShape, t: int):
    def make(device, dtype) -> Inputs:
        from pygen.nn.moe import MoE

        with torch.device("meta"):
            layer = MoE(**_layer_fields(s))
        # meta -> drawn directly on the device in the bench dtype (the router stays float32)
        for i, (name, p) in enumerate(list(layer.named_parameters())):
            if not name.startswith("gate."):
                val = _randn(p.shape, 30 + i, device, dtype, p.shape[-1] ** -0.5)
            else:
                val = _randn(p.shape, 25, device, torch.float32, s.hidden**-0.5)
            owner, _, leaf = name.rpartition(".")
            setattr(layer.get_submodule(owner), leaf, torch.nn.Parameter(val, requires_grad=False))
        layer.tokens_per_expert = torch.zeros(s.experts, dtype=torch.int64, device=device)
        layer.gate.e_score_correction_bias = _randn((s.experts,), 21, device, torch.float32, 0.05)
        layer.eval().requires_grad_(False)
        x = _randn((t, s.hidden), 22, device, dtype)
        grad = _randn((t, s.hidden), 23, device, dtype)
        return Inputs({"x": x, "layer": layer}, [x], grad)

    return make


def _layer_run(I, b):
    I.layer.backend = b
    return I.layer(I.x)


def _layer_ref(layer, x):
    layer.backend = "reference"
    return layer(x)


def _hf_layer(impl: str, s: MoEShape):
    def factory():
        import transformers
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

        from pygen.integrations._swaps import adopt_tensors

        cfg = transformers.DeepseekV3Config(**_layer_fields(s), experts_implementation=impl)
        cache: dict[int, torch.nn.Module] = {}

        def run(I):
            hf = cache.get(id(I.layer))
            if hf is None:  # the same weight tensors as the pygen layer (no copy)
                with torch.device("meta"):
                    hf = DeepseekV3MoE(cfg)
                adopt_tensors(hf, I.layer)
                hf.config._experts_implementation = impl
                cache.clear()
                cache[id(I.layer)] = hf
            return hf(I.x)

        return run

    return factory


def _layer_cases(s: MoEShape, tokens, tag: str, device) -> list[Case]:
    out = []
    for t in tokens:
        is_ = s.inter * s.n_shared
        shape = {
            **s.as_dict(),
            "T": t,
            "gflop_fwd": (6 * t * s.top_k * s.inter * s.hidden + 6 * t * is_ * s.hidden + 2 * t * s.experts * s.hidden)
            / 1e9,
        }
        fused = _fused_bytes(s, t, weight_grads=False)  # the layer's weights are frozen (x is the leaf)

        def nbytes(I, mode, t=t, is_=is_, fused=fused):  # bound now: every case had the last T's
            eb = I.x.element_size()
            with torch.no_grad():
                ids = I.layer.gate(I.x)[2]
            active = int(torch.unique(ids).numel())
            probe = SimpleNamespace(x=I.x, active=active)
            extra_w = eb * 3 * is_ * s.hidden + 4 * s.experts * s.hidden
            extra = extra_w + 4 * t * s.experts
            return fused(probe, mode) + _with_bwd(extra, extra_w + 8 * t * s.experts, mode)

        out.append(
            Case(
                FAMILY,
                "moe_layer",
                f"{tag}-t{t}",
                shape,
                _layer_inputs(s, t),
                _layer_run,
                (_layer_ref, lambda I: (I.layer, I.x)),
                nbytes,
                "fused_moe + Eb*3*Is*H + 4EH + 4TE (bwd: weights read once, no dW: frozen)",
                baselines={
                    "transformers:eager": _hf_layer("eager", s),
                    "transformers:grouped_mm": _hf_layer("grouped_mm", s),
                },
                backends=_backends("fused_moe", device),
            )
        )
    return out


def cases(quick: bool = False, device: str | torch.device | None = None) -> list[Case]:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if quick:
        s, tag = QUICK, "quick"
        route_s, route_t, exp_s, exp_t = s, TOKENS["quick"], s, TOKENS["quick"]
        layer_t = TOKENS["quick"]
    elif torch.device(device).type == "cuda":
        tag = "dsv3"
        route_s, route_t, exp_s, exp_t = DSV3, TOKENS["gpu"], DSV3, TOKENS["gpu"]
        layer_t = tuple(t for t in TOKENS["gpu"] if t <= LAYER_MAX_TOKENS)
    else:
        tag = "dsv3"
        route_s, route_t = DSV3, TOKENS["cpu_route"]
        exp_s, exp_t = CPU_SCALED, TOKENS["cpu_experts"]
        layer_t = exp_t
    exp_tag = tag if exp_s is route_s else "cpu-h1024-i256"
    return (
        _route_cases(route_s, route_t, tag, device)
        + _fused_cases(exp_s, exp_t, exp_tag, device)
        + _layer_cases(exp_s, layer_t, exp_tag, device)
    )


def tflops(row: dict) -> float | None:
    """Achieved TFLOP/s of a result row (a JSON line of this family), from the ``gflop_fwd`` of
    its shape dict: backward counts twice the forward (dX and dW GEMMs), fwd+bwd three times; for
    moe_layer (frozen weights: dX only) once and twice.
    None for rows without a FLOP model (routing) or without a time. The harness reports GB/s
    only; this is what the GPU tables in docs/moe_layer.md are to be computed with."""
    gf = (row.get("shape") or {}).get("gflop_fwd")
    ms = row.get("median_ms")
    if not gf or not ms:
        return None
    bwd = 1 if row.get("op") == "moe_layer" else 2
    return gf * {"fwd": 1, "bwd": bwd, "fwd+bwd": 1 + bwd}[row["mode"]] / ms
