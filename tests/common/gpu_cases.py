"""One small call of every public op with a kernel behind it, for the GPU-only tests
(tests/common/test_cuda_graphs.py: capture and replay under torch.cuda.graph; tests/common/test_multi_gpu.py:
launch on cuda:1 while cuda:0 is current).

A case builds its inputs on the CPU from a seed (``make(seed) -> dict``): two seeds give tensors
of the same shapes, dtypes and Python arguments but different values, so a graph captured on the
first set can be replayed on the second (copied into the captured tensors) and compared with an
eager call on the second set. ``call(inputs, backend)`` runs the op; ``backends`` are the kernel
backends that implement it on CUDA (None: the op has no backend argument). An op that writes into
one of its inputs (mla_cache_append) returns that tensor, and callers pass copies.

made_sample is left out (it builds its schedule from its degree vectors on the host, so it cannot
be captured: pygen/ops/_made_sample.py), and so are planar / radial (reference only) and
sort_hidden_units (a parameter helper). tests/common/test_cuda_graphs.py checks on the CPU that this
list covers every other public op and that each case is well formed (see there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from helpers import make_rois

from pygen import ops
from pygen.ref import fp8 as fp8_ref, made as made_ref, mla as mla_ref

NOT_COVERED = {"made_sample", "planar", "radial", "sort_hidden_units"}


@dataclass(frozen=True)
class Case:
    family: str
    name: str  # the op, with a variant after a dot ("roi_align.list")
    make: Callable[[int], dict[str, Any]]
    call: Callable[[dict[str, Any], str | None], Any]
    backends: tuple = ("triton",)

    @property
    def op(self) -> str:
        return self.name.split(".")[0]


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


# ---- roi ------------------------------------------------------------------------------------------
def _roi_base(seed):
    g = _g(100 + seed)
    x = _rn(g, 2, 8, 12, 10)
    rois = make_rois(6, 2, 12, 10, 0.5, g)
    rois[:, 0] = torch.tensor([0.0, 1, 0, 1, 0, 1])  # fixed images: the list form keeps its shapes
    return {"x": x, "rois": rois, "boxes": [rois[0::2, 1:].contiguous(), rois[1::2, 1:].contiguous()]}


def _msroi(seed):
    """Two FPN levels (1/4 and 1/8 of a 128-pixel image) and boxes of 10-40 pixels (level 2) and
    110-150 pixels (level 3, the canonical 224 at level 4 halving per level)."""
    g = _g(200 + seed)
    feats = [_rn(g, 2, 8, 32, 32), _rn(g, 2, 8, 16, 16)]
    k = 6
    size = torch.where(
        torch.arange(k) % 2 == 0, 10 + 30 * torch.rand(k, generator=g), 110 + 40 * torch.rand(k, generator=g)
    )
    x1, y1 = torch.rand(k, generator=g) * (128 - size), torch.rand(k, generator=g) * (128 - size)
    boxes = torch.stack([torch.tensor([0.0, 1, 1, 0, 1, 0]), x1, y1, x1 + size, y1 + size * 0.8], 1)
    return {"feats": feats, "boxes": boxes}


_ROI = ("cuda", "triton")
ROI = [
    Case(
        "roi", "roi_align", _roi_base, lambda I, b: ops.roi_align(I["x"], I["rois"], 3, 0.5, 2, True, backend=b), _ROI
    ),
    Case(
        "roi", "roi_align.list", _roi_base, lambda I, b: ops.roi_align(I["x"], I["boxes"], 3, 0.5, -1, backend=b), _ROI
    ),
    Case("roi", "roi_pool", _roi_base, lambda I, b: ops.roi_pool(I["x"], I["rois"], 3, 0.5, backend=b), _ROI),
    Case(
        "roi", "ps_roi_align", _roi_base, lambda I, b: ops.ps_roi_align(I["x"], I["rois"], 2, 0.5, 2, backend=b), _ROI
    ),
    Case("roi", "ps_roi_pool", _roi_base, lambda I, b: ops.ps_roi_pool(I["x"], I["rois"], 2, 0.5, backend=b), _ROI),
    Case(
        "roi",
        "multi_scale_roi_align",
        _msroi,
        lambda I, b: ops.multi_scale_roi_align(I["feats"], I["boxes"], 2, [1 / 4, 1 / 8], 2, backend=b),
        _ROI,
    ),
]


# ---- flows ----------------------------------------------------------------------------------------
def _flows(seed):
    g = _g(300 + seed)
    c = 4
    a = _rn(g, 3, 5, 5) + 3 * torch.eye(5)
    return {
        "a": a,
        "x": _rn(g, 2, c, 3, 3),
        "xs": _rn(g, 3, 6),
        "ls": _rn(g, 3, 6),
        "sh": _rn(g, 3, 6),
        "loc": _rn(g, c),
        "logs": _rn(g, c, scale=0.1),
        "w": torch.linalg.qr(_rn(g, c, c))[0],
        "perm": torch.eye(c)[torch.randperm(c, generator=g)],
        "lower": _rn(g, c, c),
        "upper": _rn(g, c, c),
        "diag": torch.rand(c, generator=g) + 0.5,
        "z": _rn(g, 3, 6),
        "A": _rn(g, 6, 2, scale=0.1),
        "B": _rn(g, 2, 6, scale=0.1),
        "bb": _rn(g, 2),
    }


FLOWS = [
    Case("flows", "slogdet", _flows, lambda I, b: ops.slogdet(I["a"], backend=b)),
    Case("flows", "affine_coupling", _flows, lambda I, b: ops.affine_coupling(I["xs"], I["ls"], I["sh"], backend=b)),
    Case(
        "flows",
        "affine_coupling.reverse",
        _flows,
        lambda I, b: ops.affine_coupling(I["xs"], I["ls"], I["sh"], reverse=True, backend=b),
    ),
    Case("flows", "additive_coupling", _flows, lambda I, b: ops.additive_coupling(I["xs"], I["sh"], backend=b)),
    Case("flows", "actnorm", _flows, lambda I, b: ops.actnorm(I["x"], I["loc"], I["logs"], backend=b)),
    Case("flows", "actnorm_init", _flows, lambda I, b: ops.actnorm_init(I["x"], backend=b)),
    Case("flows", "inv_conv1x1", _flows, lambda I, b: ops.inv_conv1x1(I["x"], I["w"], backend=b)),
    Case("flows", "inv_conv1x1.reverse", _flows, lambda I, b: ops.inv_conv1x1(I["x"], I["w"], reverse=True, backend=b)),
    Case(
        "flows",
        "inv_conv1x1_lu",
        _flows,
        lambda I, b: ops.inv_conv1x1_lu(I["x"], I["perm"], I["lower"], I["upper"], I["diag"], backend=b),
    ),
    Case(
        "flows",
        "inv_conv1x1_lu.reverse",
        _flows,
        lambda I, b: ops.inv_conv1x1_lu(I["x"], I["perm"], I["lower"], I["upper"], I["diag"], reverse=True, backend=b),
    ),
    Case("flows", "sylvester", _flows, lambda I, b: ops.sylvester(I["z"], I["A"], I["B"], I["bb"], backend=b)),
]


# ---- made -----------------------------------------------------------------------------------------
def _made(seed):
    g = _g(400 + seed)
    d, h = 6, 10
    in_deg = torch.arange(1, d + 1)[torch.randperm(d, generator=g)]
    hid = torch.randint(1, d, (h,), generator=g)
    x = _rn(g, 5, d)
    return {
        "x": x,
        "w": _rn(g, h, d),
        "b": _rn(g, h),
        "in_deg": in_deg,
        "hid": hid,
        "mask": made_ref.autoregressive_mask(in_deg, hid).float(),
        "wo": _rn(g, 2 * d, h),
        "out_deg": in_deg.repeat(2),
        "hx": _rn(g, 5, h),
        "bits": ops.pack_bits((torch.rand(5, d, generator=g) > 0.5).float()),
        "bin": (torch.rand(5, d, generator=g) > 0.5).float(),
    }


MADE = [
    Case(
        "made",
        "masked_linear",
        _made,
        lambda I, b: ops.masked_linear(I["x"], I["w"], I["b"], I["in_deg"], I["hid"], activation="relu", backend=b),
    ),
    Case(
        "made",
        "masked_linear.mask",
        _made,
        lambda I, b: ops.masked_linear(I["x"], I["w"], I["b"], mask=I["mask"], backend=b),
    ),
    Case(
        "made",
        "masked_linear_plain",
        _made,
        lambda I, b: ops.masked_linear_plain(I["x"], I["w"], I["b"], I["mask"] > 0, backend=b),
    ),
    Case(
        "made",
        "masked_linear_bits",
        _made,
        lambda I, b: ops.masked_linear_bits(I["bits"], 6, I["w"], I["b"], I["in_deg"], I["hid"], backend=b),
    ),
    Case(
        "made",
        "made_affine_forward",
        _made,
        lambda I, b: ops.made_affine_forward(I["hx"], I["wo"], None, I["hid"], I["out_deg"], I["x"], backend=b),
    ),
    Case("made", "pack_bits", _made, lambda I, b: ops.pack_bits(I["bin"]), (None,)),
]


# ---- mla ------------------------------------------------------------------------------------------
def _mla(seed):
    g = _g(500 + seed)
    q, kv, bt, sl = mla_ref.random_decode_problem((6, 3), 1, 16, 4, g)
    pos = torch.tensor([[5, 5], [2, -1]], dtype=torch.int32)  # a duplicate: last writer wins
    return {
        "q": q,
        "kv": kv,
        "bt": bt,
        "sl": sl,
        "pos": pos,
        "lat": _rn(g, 2, 2, 512),
        "rope": _rn(g, 2, 2, 64),
        "pq": _rn(g, 7, 2, 24),
        "pk": _rn(g, 9, 2, 24),
        "pv": _rn(g, 9, 2, 16),
        "cq": mla_ref.cu_seqlens((3, 4)),
        "ck": mla_ref.cu_seqlens((5, 4)),
        "oa": _rn(g, 4, 3, 16),
        "ob": _rn(g, 4, 3, 16),
        "la": _rn(g, 3, 4),
        "lb": _rn(g, 3, 4),
    }


MLA = [
    Case("mla", "mla_decode", _mla, lambda I, b: ops.mla_decode(I["q"], I["kv"], I["bt"], I["sl"], backend=b)),
    Case(
        "mla",
        "mla_cache_append",
        _mla,  # writes into I["kv"] and returns it
        lambda I, b: ops.mla_cache_append(I["kv"], I["bt"], I["pos"], I["lat"], I["rope"], backend=b),
    ),
    Case(
        "mla",
        "mla_prefill",
        _mla,
        lambda I, b: ops.mla_prefill(
            I["pq"], I["pk"], I["pv"], I["cq"], I["ck"], max_seqlen_q=4, max_seqlen_k=5, backend=b
        ),
    ),
    Case(
        "mla",
        "merge_attn_states",
        _mla,
        lambda I, b: ops.merge_attn_states(I["oa"], I["la"], I["ob"], I["lb"], backend=b),
    ),
]


# ---- fp8 ------------------------------------------------------------------------------------------
def _fp8(seed):
    g = _g(600 + seed)
    x = _rn(g, 16, 128)
    q, s = fp8_ref.quantize_1x128(x)
    wq, ws = fp8_ref.quantize_128x128(_rn(g, 128, 128, scale=0.05))
    qg, sg = fp8_ref.quantize_1x128(_rn(g, 128, 128))
    gq, gs = fp8_ref.quantize_1x128(_rn(g, 128, 16).t().contiguous())
    return {
        "x": x,
        "w": _rn(g, 128, 128, scale=0.05),
        "q": q,
        "s": s,
        "wq": wq,
        "ws": ws,
        "qg": qg,
        "sg": sg,
        "bq": wq[None].contiguous(),
        "bs": ws[None].contiguous(),
        "mi": fp8_ref.grouped_layout([100])[0],
        "gq": gq,
        "gs": gs,
    }


FP8 = [
    Case("fp8", "quantize_fp8_1x128", _fp8, lambda I, b: ops.quantize_fp8_1x128(I["x"], backend=b)),
    Case("fp8", "quantize_fp8_128x128", _fp8, lambda I, b: ops.quantize_fp8_128x128(I["w"], backend=b)),
    Case("fp8", "dequantize_fp8", _fp8, lambda I, b: ops.dequantize_fp8(I["q"], I["s"]), (None,)),
    Case(
        "fp8",
        "fp8_gemm",
        _fp8,
        lambda I, b: ops.fp8_gemm(I["q"], I["s"], I["wq"], I["ws"], out_dtype=torch.float32, backend=b),
    ),
    Case(
        "fp8",
        "fp8_gemm_grouped",
        _fp8,
        lambda I, b: ops.fp8_gemm_grouped(
            I["qg"], I["sg"], I["bq"], I["bs"], I["mi"], out_dtype=torch.float32, backend=b
        ),
    ),
    Case("fp8", "fp8_gemm_wgrad", _fp8, lambda I, b: ops.fp8_gemm_wgrad(I["gq"], I["gs"], I["gq"], I["gs"], backend=b)),
]


# ---- moe ------------------------------------------------------------------------------------------
def _moe(seed):
    g = _g(700 + seed)
    tok, e, hdim, inter, k = 6, 4, 16, 8, 2
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(tok)]).to(torch.int32)
    x = _rn(g, tok, hdim)
    perm = ops.moe_permute(x, ids, e, backend="reference")
    w1q, w1s, w2q, w2s = ops.quantize_moe_weights_fp8(
        _rn(g, e, 256, 128, scale=0.1), _rn(g, e, 128, 128, scale=0.1), backend="reference"
    )
    return {
        "logits": _rn(g, tok, e),
        "ids": ids,
        "wts": torch.rand(tok, k, generator=g),
        "x": x,
        "w1": _rn(g, e, 2 * inter, hdim, scale=0.1),
        "w2": _rn(g, e, hdim, inter, scale=0.1),
        "permuted": perm[0],
        "slots": perm[1],
        "qw1": _rn(g, e, 256, 128, scale=0.1),
        "qw2": _rn(g, e, 128, 128, scale=0.1),  # [E, 2I, H], [E, H, I]
        "w1q": w1q,
        "w1s": w1s,
        "w2q": w2q,
        "w2s": w2s,
        "x8": _rn(g, tok, 128),
    }


_MOE_CSRC = ("cuda", "triton")
MOE = [
    Case("moe", "moe_route", _moe, lambda I, b: ops.moe_route(I["logits"], 2, backend=b)),
    Case("moe", "moe_align", _moe, lambda I, b: ops.moe_align(I["ids"], 4, 4, backend=b), _MOE_CSRC),
    Case("moe", "moe_permute", _moe, lambda I, b: ops.moe_permute(I["x"], I["ids"], 4, backend=b), _MOE_CSRC),
    Case(
        "moe",
        "moe_unpermute",
        _moe,
        lambda I, b: ops.moe_unpermute(I["permuted"], I["slots"], I["wts"], top_k=2, backend=b),
        _MOE_CSRC,
    ),
    Case("moe", "fused_moe", _moe, lambda I, b: ops.fused_moe(I["x"], I["w1"], I["w2"], I["wts"], I["ids"], backend=b)),
    Case(
        "moe",
        "quantize_moe_weights_fp8",
        _moe,
        lambda I, b: ops.quantize_moe_weights_fp8(I["qw1"], I["qw2"], backend=b),
    ),
    Case(
        "moe",
        "fused_moe_fp8",
        _moe,
        lambda I, b: ops.fused_moe_fp8(I["x8"], I["w1q"], I["w1s"], I["w2q"], I["w2s"], I["wts"], I["ids"], backend=b),
    ),
]


# ---- losses ---------------------------------------------------------------------------------------
def _losses(seed):
    g = _g(900 + seed)
    t = torch.randint(0, 70, (9,), generator=g)
    t[2] = -100
    return {"h": _rn(g, 9, 16), "w": _rn(g, 70, 16, scale=0.3), "b": _rn(g, 70), "t": t}


def _grpo(seed):
    g = _g(950 + seed)
    lp = -torch.rand(3, 5, generator=g)
    tok = torch.randint(0, 40, (3, 5), generator=g)
    return {"lp": lp, "old": lp + 0.1 * _rn(g, 3, 5), "ref": lp + 0.1 * _rn(g, 3, 5), "adv": _rn(g, 3),
            "mask": torch.rand(3, 5, generator=g) > 0.3, "h": _rn(g, 3, 5, 8), "w": _rn(g, 40, 8, scale=0.3),
            "tok": tok, "rewards": _rn(g, 6)}  # fmt: skip


LOSSES = [
    Case("losses", "linear_cross_entropy", _losses, lambda I, b: ops.linear_cross_entropy(
        I["h"], I["w"], I["t"], I["b"], z_loss=1e-3, backend=b)),
    Case("losses", "linear_log_probs", _losses, lambda I, b: ops.linear_log_probs(
        I["h"], I["w"], I["t"].clamp(min=0), backend=b)),
    Case("losses", "info_nce", _losses, lambda I, b: ops.info_nce(I["h"][:8], temperature=0.2, backend=b)
        + ops.info_nce(I["h"], I["w"][:9], temperature=0.1, queue=I["w"][9:], symmetric=False, backend=b)),
    Case("losses", "grpo_loss", _grpo, lambda I, b: ops.grpo_loss(
        I["lp"], I["old"], I["ref"], I["adv"], I["mask"], backend=b) + ops.grpo_loss(
        I["lp"], None, None, I["adv"], I["mask"], beta=0.0, loss_type="dapo", backend=b)),
    Case("losses", "linear_grpo_loss", _grpo, lambda I, b: ops.linear_grpo_loss(
        I["h"], I["w"], I["tok"], I["old"], I["ref"], I["adv"], I["mask"], loss_type="dr_grpo", backend=b)),
    Case("losses", "group_advantages", _grpo, lambda I, b: ops.group_advantages(I["rewards"], 3), (None,)),
]  # fmt: skip


CASES: list[Case] = ROI + FLOWS + MADE + MLA + FP8 + MOE + LOSSES


def params(cases=None):
    """(case, backend) pairs with ids ``<family>-<case name>-<backend>`` (the summary script,
    bench/device_summary.py, reads the family from the first part)."""
    out = []
    for c in cases or CASES:
        for b in c.backends:
            out.append(((c, b), f"{c.family}-{c.name}-{b or 'default'}"))
    return out


# ---- helpers ----------------------------------------------------------------------------------------
def tensors(obj) -> list[torch.Tensor]:
    """Every tensor in an output or input structure, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj) for t in tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors(o)]
    return []


def to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_device(v, device) for v in obj)
    return obj


def clone(obj):
    """A deep copy of the tensors (an op that writes into an input then leaves the original alone)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clone(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(clone(v) for v in obj)
    return obj


def same_layout(a, b) -> bool:
    """True when two input structures have the same tensors (shape, dtype, strides) and equal
    non-tensor values, so that ``copy_into(a, b)`` is a valid refill."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and a.stride() == b.stride()
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_layout(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_layout(x, y) for x, y in zip(a, b))
    return a == b


def copy_into(static, fresh) -> None:
    for s, f in zip(tensors(static), tensors(fresh), strict=True):
        s.copy_(f)


def assert_same_result(got, want, what: str = "") -> None:
    """Two runs of the same kernels: integer outputs equal, floating ones equal up to the order of
    atomic additions (split-K, scatter backward)."""
    g, w = tensors(got), tensors(want)
    assert len(g) == len(w), f"{what}: {len(g)} output tensors != {len(w)}"
    for i, (a, b) in enumerate(zip(g, w)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}[{i}]: {a.shape}/{a.dtype} != {b.shape}/{b.dtype}"
        a, b = a.detach().cpu(), b.detach().cpu()
        if a.dtype.is_floating_point:
            a, b = a.double(), b.double()
            scale = max(1.0, float(b[b.isfinite()].abs().max()) if b.isfinite().any() else 1.0)
            where = f"{what}[{i}]"
            torch.testing.assert_close(
                a, b, rtol=1e-3, atol=1e-4 * scale, equal_nan=True, msg=lambda m, where=where: f"{where}: {m}"
            )
        else:
            assert torch.equal(a, b), f"{what}[{i}]: {int((a != b).sum())} of {a.numel()} elements differ"


def differs(a, b) -> bool:
    """True when some output tensor differs (so a replay on new values is a real check)."""
    return any(not torch.equal(x.detach().cpu(), y.detach().cpu()) for x, y in zip(tensors(a), tensors(b)))
