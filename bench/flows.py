"""Normalizing-flow family benchmarks: what one Glow step sees, and batched slogdet.

Default shapes (``cases(quick=False)``)
---------------------------------------
Glow on 32x32x3 images, 3 levels of 32 steps (Kingma & Dhariwal 2018), batch 64 (the per-GPU
training batch of the Glow code release). After each level's squeeze the activations are
    level 1: [64, 12, 16, 16]   level 2: [64, 24, 8, 8]   level 3: [64, 48, 4, 4]
and every step of a level sees the same shape, so the per-op cases are one step's calls:
    affine_coupling   x_b [B, C/2, H, W] at level 1; (raw, t) = the channel halves of the
                      conditioner output [B, C, H, W] (views, read in place); clamp 2.0
    actnorm           x [B, C, H, W] at level 1, per-channel loc / log_scale
    actnorm_init      the data-dependent init's statistics of the same x (forward only)
    inv_conv1x1_lu    x at level 1 (C = 12) and level 3 (C = 48), W formed from P, L, U, s
    inv_conv1x1       plain W at level 3 (C = 48): log-det from the batched slogdet
plus ``b1024`` variants of the coupling and ActNorm at level 1 with batch 1024 (25 MB per
tensor), where the data no longer fits in L2 and the memory floor, not the launch, is the limit.
slogdet: 1,000,000 matrices of 16x16 and 10,000 of 64x64 (issue 3). On a CPU only the eager
reference (which *is* torch.linalg.slogdet) runs, so the CPU cases use 20,000 x 16x16 and
500 x 64x64: the same per-matrix work, sized so a CPU run takes seconds rather than minutes.

Outputs: the harness compares and differentiates one tensor per call, so every flow op that
returns (y, logdet) has two cases: ``<label>`` times the op with y as the output and
``<label>:logdet`` the same op with the log-det as the output (the fused kernel computes both in
either case; the second checks the log-det and its gradient). slogdet's output is
stack([sign, logabsdet]) ([2, n], negligible next to the n*d*d input).

The family has ``triton`` and ``reference`` backends only (no csrc): every case says so in
``Case.backends``, and the harness lists pygen:cuda / pygen:cpu as skipped.

Byte model (E = bytes per element, N = elements of x_b / x, B = batch, C = channels)
----------------------------------------------------------------------------------
    affine_coupling fwd   read x, raw, t; write y: 4*N*E (+ 4B for the log-det)
                    bwd   read x, raw, g; write dx, draw: 5*N*E (+ 4B); d shift = g is aliased
    actnorm         fwd   read x, write y: 2*N*E; bwd: read x, g, write dx: 3*N*E
                          (+ 8*B*C*ceil(S/BLOCK_S) partial sums, counted)
    actnorm_init    fwd   read x twice (mean, then centred squares): 2*N*E
    conv 1x1        fwd   read x, write y: 2*N*E (+ C*C*E); bwd: dx pass 2*N*E + dW pass 2*N*E
    slogdet         fwd   n*d*d*E + 8n; bwd: n*d*d*E (read A) + n*d*d*4 (write grad) + 4n
    fwd+bwd               fwd + bwd
FLOPs are far below the H200's fp32 peak for all of these except slogdet (see docs/flows.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import pygen.ops
import pygen.ref.flows as ref
from pygen.tools.harness import Case, Inputs

FAMILY = "flows"


BACKENDS = ("triton",)  # kernel backends of the family (no csrc); the reference is a baseline row


def FlowCase(*args, **kw) -> Case:
    return Case(*args, backends=BACKENDS, **kw)


@dataclass(frozen=True)
class GlowShape:
    batch: int = 64
    image: tuple[int, int, int] = (3, 32, 32)
    levels: int = 3
    steps: int = 32

    def level(self, lvl: int) -> tuple[int, int, int]:
        """(C, H, W) after level ``lvl``'s squeeze (1-based)."""
        c, h, w = self.image
        for i in range(lvl):
            c, h, w = c * 4, h // 2, w // 2
            if i < lvl - 1:
                c //= 2
        return c, h, w


DEFAULT = {
    "glow": GlowShape(),
    "big_batch": 1024,
    "slogdet_gpu": ((1_000_000, 16), (10_000, 64)),
    "slogdet_cpu": ((20_000, 16), (500, 64)),
}
QUICK = {
    "glow": GlowShape(batch=4, image=(3, 8, 8), levels=2, steps=2),
    "big_batch": 16,
    "slogdet_gpu": ((64, 16), (4, 64)),
    "slogdet_cpu": ((64, 16), (4, 64)),
}


def _randn(shape, seed: int, device, dtype, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(device=device, dtype=dtype)


def _with_bwd(fwd: int, bwd: int, mode: str) -> int:
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


# ---- coupling ------------------------------------------------------------------------------------
def _coupling_cases(s: GlowShape, batch: int, tag: str) -> list[Case]:
    c, h, w = s.level(1)
    shape = {
        "B": batch,
        "C_b": c // 2,
        "H": h,
        "W": w,
        "conditioner": [batch, c, h, w],
        "clamp": 2.0,
        "glow": {"image": list(s.image), "levels": s.levels, "steps": s.steps},
    }

    def make(which):
        def inputs(device, dtype) -> Inputs:
            x = _randn((batch, c // 2, h, w), 10, device, dtype)
            hcond = _randn((batch, c, h, w), 11, device, dtype, 0.5)
            grad = _randn(
                (batch, c // 2, h, w) if which == "y" else (batch,),
                12,
                device,
                dtype if which == "y" else torch.float32,
            )
            return Inputs({"x": x, "h": hcond}, [x, hcond], grad)

        return inputs

    def run(which):
        def call(I, b):
            raw, t = I.h.chunk(2, 1)
            y, ld = pygen.ops.affine_coupling(I.x, raw, t, clamp=2.0, backend=b)
            return y if which == "y" else ld

        return call

    def reference(which):
        k = 0 if which == "y" else 1
        return (lambda x, hc: ref.affine_coupling(x, *hc.chunk(2, 1), False, 2.0)[k], lambda I: (I.x, I.h))

    def nbytes(I, mode):
        n, e, b = I.x.numel(), I.x.element_size(), I.x.shape[0]
        return _with_bwd(4 * n * e + 4 * b, 5 * n * e + 4 * b, mode)

    out = []
    for which in ("y", "logdet"):
        out.append(
            FlowCase(
                FAMILY,
                "affine_coupling",
                tag + ("" if which == "y" else ":logdet"),
                shape,
                make(which),
                run(which),
                reference(which),
                nbytes,
                "fwd 4*N*E + 4B; bwd 5*N*E + 4B (shift grad aliased)",
            )
        )
    return out


# ---- actnorm ---------------------------------------------------------------------------------------
def _actnorm_case(s: GlowShape, batch: int, tag: str) -> Case:
    c, h, w = s.level(1)
    shape = {"B": batch, "C": c, "H": h, "W": w, "param": "log_scale"}

    def make(device, dtype) -> Inputs:
        x = _randn((batch, c, h, w), 20, device, dtype)
        loc, ls = _randn((c,), 21, device, dtype), _randn((c,), 22, device, dtype, 0.2)
        return Inputs({"x": x, "loc": loc, "ls": ls}, [x, loc, ls], _randn((batch, c, h, w), 23, device, dtype))

    def nbytes(I, mode):
        n, e = I.x.numel(), I.x.element_size()
        s_blocks = math.ceil(h * w / min(1024, 1 << max(0, (h * w - 1).bit_length())))
        return _with_bwd(2 * n * e, 3 * n * e + 8 * batch * c * s_blocks, mode)

    return FlowCase(
        FAMILY,
        "actnorm",
        tag,
        shape,
        make,
        lambda I, b: pygen.ops.actnorm(I.x, I.loc, I.ls, backend=b)[0],
        (lambda x, loc, ls: ref.actnorm(x, loc, ls)[0], lambda I: (I.x, I.loc, I.ls)),
        nbytes,
        "fwd 2*N*E; bwd 3*N*E + per-channel partial sums",
    )


def _actnorm_init_case(s: GlowShape, batch: int, tag: str) -> Case:
    c, h, w = s.level(1)

    def make(device, dtype) -> Inputs:
        x = _randn((batch, c, h, w), 24, device, dtype, 2.0) + 1.0
        return Inputs({"x": x}, [x], None)

    return FlowCase(
        FAMILY,
        "actnorm_init",
        tag,
        {"B": batch, "C": c, "H": h, "W": w},
        make,
        # the harness compares one tensor: loc and log_scale stacked ([2, C], negligible)
        lambda I, b: torch.stack(pygen.ops.actnorm_init(I.x, backend=b)),
        (lambda x: torch.stack(ref.actnorm_init(x)), lambda I: (I.x,)),
        lambda I, mode: 2 * I.x.numel() * I.x.element_size(),
        "two passes over x: 2*N*E",
        modes=("fwd",),
    )


# ---- invertible 1x1 conv ---------------------------------------------------------------------------
def _conv_cases(s: GlowShape, tag: str) -> list[Case]:
    out = []
    for lvl in sorted({1, s.levels}):
        c, h, w = s.level(lvl)
        shape = {"B": s.batch, "C": c, "H": h, "W": w, "level": lvl}

        def make(device, dtype, c=c, h=h, w=w) -> Inputs:
            x = _randn((s.batch, c, h, w), 30, device, dtype)
            q = torch.linalg.qr(torch.randn(c, c, generator=torch.Generator().manual_seed(31), dtype=torch.float64))[0]
            p, low, up = torch.linalg.lu(q)
            diag = torch.diagonal(up).clone()
            t = {k: v.to(device=device, dtype=dtype) for k, v in dict(p=p, low=low, up=up, diag=diag, w=q).items()}
            grad = _randn((s.batch, c, h, w), 32, device, dtype)
            return Inputs({"x": x, **t}, [x, t["low"], t["up"], t["diag"], t["w"]], grad)

        def nbytes(I, mode):
            n, e, cc = I.x.numel(), I.x.element_size(), I.x.shape[1]
            return _with_bwd(2 * n * e + cc * cc * e, 4 * n * e + 3 * cc * cc * e, mode)

        out.append(
            FlowCase(
                FAMILY,
                "inv_conv1x1_lu",
                f"{tag}-l{lvl}",
                shape,
                make,
                lambda I, b: pygen.ops.inv_conv1x1_lu(I.x, I.p, I.low, I.up, I.diag, backend=b)[0],
                (
                    lambda x, p, lo, up, d: ref.inv_conv1x1_lu(x, p, lo, up, d)[0],
                    lambda I: (I.x, I.p, I.low, I.up, I.diag),
                ),
                nbytes,
                "fwd 2*N*E + C*C*E; bwd 4*N*E + 3*C*C*E (W formed once per call, counted once)",
            )
        )
        if lvl == s.levels:
            out.append(
                FlowCase(
                    FAMILY,
                    "inv_conv1x1",
                    f"{tag}-l{lvl}",
                    shape,
                    make,
                    lambda I, b: pygen.ops.inv_conv1x1(I.x, I.w, backend=b)[0],
                    (lambda x, w: ref.inv_conv1x1(x, w)[0], lambda I: (I.x, I.w)),
                    nbytes,
                    "as inv_conv1x1_lu; the log-det from a C x C slogdet (torch.linalg in the reference)",
                )
            )
    return out


# ---- slogdet --------------------------------------------------------------------------------------
def _slogdet_case(n: int, d: int, tag: str) -> Case:
    shape = {"n": n, "d": d}

    def make(device, dtype) -> Inputs:
        # well-conditioned: Gaussian / sqrt(d) plus the identity
        a = _randn((n, d, d), 40 + d, device, torch.float32, 1 / math.sqrt(d))
        a = (a + torch.eye(d, device=device)).to(dtype)
        return Inputs({"a": a}, [a], _randn((2, n), 41, device, dtype))

    def run(I, b):
        sign, lad = pygen.ops.slogdet(I.a, backend=b)
        return torch.stack([sign, lad])

    def nbytes(I, mode):
        e = I.a.element_size()
        return _with_bwd(n * d * d * e + 8 * n, n * d * d * (e + 4) + 4 * n, mode)

    return FlowCase(
        FAMILY,
        "slogdet",
        f"{tag}-{n}x{d}x{d}",
        shape,
        make,
        run,
        (lambda a: torch.stack(torch.linalg.slogdet(a)), lambda I: (I.a,)),
        nbytes,
        "fwd n*d*d*E + 8n; bwd n*d*d*(E+4) + 4n  (reference = torch.linalg.slogdet)",
    )


def cases(quick: bool = False, device: str | torch.device | None = None) -> list[Case]:
    shapes = QUICK if quick else DEFAULT
    pre = "quick-" if quick else ""
    s = shapes["glow"]
    big = shapes["big_batch"]
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    slog = shapes["slogdet_gpu" if torch.device(device).type == "cuda" else "slogdet_cpu"]
    out = (
        _coupling_cases(s, s.batch, f"{pre}glow-l1-b{s.batch}")
        + _coupling_cases(s, big, f"{pre}glow-l1-b{big}")
        + [_actnorm_case(s, s.batch, f"{pre}glow-l1-b{s.batch}"), _actnorm_case(s, big, f"{pre}glow-l1-b{big}")]
        + [_actnorm_init_case(s, s.batch, f"{pre}glow-l1-b{s.batch}")]
        + _conv_cases(s, f"{pre}glow-b{s.batch}")
        + [_slogdet_case(n, d, pre.rstrip("-") or "issue3") for n, d in slog]
    )
    return out
