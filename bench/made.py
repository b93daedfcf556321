"""MADE family benchmarks: the layers of the MADE on 784-dim binary data, and its sampler.

Default shapes (``cases(quick=False)``)
---------------------------------------
MADE (Germain et al. 2015) on binarized-MNIST-sized data: D = 784 inputs, two hidden layers of
2048 units (nflows: MADE(784, 2048, num_blocks=1, use_residual_blocks=False)), hidden units
sorted by degree (pygen's default order), batch 4096 on CUDA.
    masked_linear   l1: 784 -> 2048 relu, l2: 2048 -> 2048 relu, l3: 2048 -> 784 strict (logits)
    masked_linear_bits  l1 on the same binary data bit-packed (int32 words; dense masked baseline
                    on the unpacked data)
                    l2-nflows-order: l2 with nflows' cyclic hidden order (fewer zero tiles)
                    random-mask: 2048 -> 2048 with an explicit mask no degrees reproduce (the
                    plain masked-matmul kernel), relu
    made_affine_forward   the MAF layer's output head on that network: 2048 -> 2 * 784 strict,
                    z = scale * x + shift and the log-det, fused (output: [z, logdet] concatenated)
    made_sample     Gaussian MADE (output_multiplier 2) over the same network, D = 784 steps,
                    256 samples on CUDA
On CPU the batch is 512, and the sampler draws 8 samples from a network with hidden width 512:
the reference matmuls of a 4096 batch take ~1 s each on the 2-core CI machine (one
``pygen bench made`` run would take over ten minutes), and one call of the D-pass sampling
baseline at width 2048 is 784 full network passes, 67 s for 16 samples on that machine (measured
once while it was shared, with the incremental sampler at 0.45 s). The shape dict of every JSON
line records the sizes actually run.

``cases(quick=True)`` keeps the structure at D = 16, hidden 64, batch 32 (8 samples).

Baselines: ``dense masked`` is what nflows / pyro / zuko compute (W * M, then F.linear, then for
the MAF head the affine map and log-det as separate elementwise ops); the
``reference`` row is pygen.ref (the same, with M rebuilt from the degrees); ``compile(reference)``
is torch.compile of pygen.ref. For made_sample, ``D passes (dense masked)`` runs the network D
times (pygen.ref.made.made_sample), and ``compile(reference)`` runs those D passes with the
network pass compiled: the D-step loop itself is left eager (torch.compiler.disable with
recursive=False on the frames that hold it), because dynamo unrolls it (measured here at D = 20:
92 s to compile; a full-size run did not finish compiling in 25 minutes).

Byte model (the GB/s column; a dense model of the traffic, not a hardware counter)
----------------------------------------------------------------------------------
E = bytes per element, M batch, K in, N out. Every weight byte is counted once per pass, so an
implementation that skips zero tiles (pygen) moves fewer bytes than the model says.
    masked_linear fwd   E*(M*K + N*K + M*N + N) + 8*(K + N)        (x, W, y, b, degrees)
    masked_linear bwd   E*(2*M*N + 2*M*K + 2*N*K + N) + 8*(K + N)  (dy, y, x, W; dx, dW, db)
    made_sample fwd     E*(sum of weights and biases + 2*B*D + B*sum(H_l))
    (fwd+bwd = fwd + bwd; made_sample bwd = its fwd model again)
FLOPs are recorded in the shape dict: ``gflop_dense`` (2*M*N*K per pass) and ``kept`` (the
fraction of mask entries that are 1); ``zero_tiles`` is the fraction of the GPU forward kernel's
128 x 64 weight tiles that are entirely masked (they are skipped: neither loaded nor multiplied).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

import pygen.ops
from pygen.ref import made as ref
from pygen.tools.harness import Case, Inputs

FAMILY = "made"


@dataclass(frozen=True)
class MADEShape:
    features: int = 784
    hidden: int = 2048
    batch_cuda: int = 4096
    batch_cpu: int = 512
    samples_cuda: int = 256
    samples_cpu: int = 8
    sample_hidden_cpu: int = 512
    on_cuda: bool = True

    @property
    def batch(self) -> int:
        return self.batch_cuda if self.on_cuda else self.batch_cpu

    @property
    def samples(self) -> int:
        return self.samples_cuda if self.on_cuda else self.samples_cpu

    @property
    def sample_hidden(self) -> int:
        return self.hidden if self.on_cuda else min(self.hidden, self.sample_hidden_cpu)


DEFAULT = MADEShape()
QUICK = MADEShape(
    features=16, hidden=64, batch_cuda=32, batch_cpu=32, samples_cuda=8, samples_cpu=8, sample_hidden_cpu=64
)
BACKENDS = ("triton",)  # kernel backends of the family (no csrc); the reference is a baseline row
GPU_TILE = (128, 64)  # kernels/made/__init__.py's 16-bit forward tile: (block_n outputs, block_k inputs)


def network_degrees(s: MADEShape, order: str = "sorted", multiplier: int = 1, hidden: int | None = None):
    """Input, two hidden and output degrees of the benchmark MADE (nflows' rule)."""
    h = ref.hidden_degrees(s.features, hidden or s.hidden)
    if order == "sorted":
        h = h[ref.degree_sort_permutation(h)]
    return [ref.input_degrees(s.features), h, h.clone(), ref.output_degrees(s.features, multiplier)]


def tile_fractions(
    in_deg: torch.Tensor, out_deg: torch.Tensor, strict: bool, block_n: int, block_k: int
) -> dict[str, float]:
    """Fractions of [block_n x block_k] weight tiles that are zero / partial / full."""
    m = ref.autoregressive_mask(in_deg, out_deg, strict).float()
    n, k = m.shape
    m = F.pad(m, (0, -k % block_k, 0, -n % block_n), value=-1.0)  # -1: outside the matrix
    t = m.view(m.shape[0] // block_n, block_n, m.shape[1] // block_k, block_k).permute(0, 2, 1, 3)
    t = t.reshape(t.shape[0], t.shape[1], -1)
    inside = t >= 0
    ones = ((t == 1) & inside).sum(-1)
    count = inside.sum(-1)
    zero = float((ones == 0).float().mean())
    full = float((ones == count).float().mean())
    return {"zero": zero, "full": full, "partial": 1.0 - zero - full}


def _randn(shape, seed, device, dtype, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float32) * scale).to(device=device, dtype=dtype)


def _linear_bytes(m, n, k):
    def model(I, mode):
        e = I.x.element_size()
        fwd = e * (m * k + n * k + m * n + n) + 8 * (k + n)
        bwd = e * (2 * m * n + 2 * m * k + 2 * n * k + n) + 8 * (k + n)
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]

    return model


def _layer_case(
    s: MADEShape,
    tag: str,
    name: str,
    k: int,
    n: int,
    in_deg,
    out_deg,
    strict: bool,
    act: str | None,
    binary_x: bool,
    seed: int,
    explicit_mask: torch.Tensor | None = None,
) -> Case:
    m = s.batch
    mask_bool = explicit_mask if explicit_mask is not None else ref.autoregressive_mask(in_deg, out_deg, strict)
    fr = tile_fractions(in_deg, out_deg, strict, *GPU_TILE) if explicit_mask is None else None
    shape = {
        "batch": m,
        "in": k,
        "out": n,
        "strict": strict,
        "activation": act or "none",
        "gflop_dense": 2 * m * n * k / 1e9,
        "kept": float(mask_bool.float().mean()),
        "zero_tiles": None if fr is None else fr["zero"],
        "mask": "explicit (not autoregressive)" if explicit_mask is not None else "degrees",
    }

    def make(device, dtype) -> Inputs:
        if binary_x:
            g = torch.Generator().manual_seed(seed)
            x = (torch.rand(m, k, generator=g) < 0.3).to(device=device, dtype=dtype)
        else:
            x = _randn((m, k), seed, device, dtype).relu()
        w = _randn((n, k), seed + 1, device, dtype, k**-0.5)
        b = _randn((n,), seed + 2, device, dtype, 0.1)
        t = {
            "x": x,
            "w": w,
            "b": b,
            "ind": in_deg.to(device),
            "outd": out_deg.to(device),
            "mask": mask_bool.to(device=device, dtype=dtype),
            "mask_bool": mask_bool.to(device),
        }
        return Inputs(t, [x, w, b], _randn((m, n), seed + 3, device, dtype))

    def dense():
        return lambda I: ref.apply_activation(F.linear(I.x, I.w * I.mask, I.b), act)

    if explicit_mask is None:
        op = lambda I, b: pygen.ops.masked_linear(I.x, I.w, I.b, I.ind, I.outd, strict, act, backend=b)
        reference = (ref.masked_linear, lambda I: (I.x, I.w, I.b, I.ind, I.outd, strict, act))
    else:
        op = lambda I, b: pygen.ops.masked_linear(I.x, I.w, I.b, mask=I.mask_bool, activation=act, backend=b)
        reference = (ref.masked_matmul, lambda I: (I.x, I.w, I.b, I.mask_bool, act))
    return Case(
        FAMILY,
        "masked_linear",
        f"{tag}-{name}",
        shape,
        make,
        op,
        reference,
        _linear_bytes(m, n, k),
        "E*(M*K + N*K + M*N + N) + 8*(K+N) fwd; bwd: see bench/made.py",
        {"dense masked": dense},
        backends=BACKENDS,
    )


def _bits_case(s: MADEShape, tag: str, in_deg, out_deg, seed: int) -> Case:
    """Layer 1 on bit-packed binary data (masked_linear_bits); weight and bias are the leaves."""
    m, k, n = s.batch, s.features, s.hidden
    shape = {
        "batch": m,
        "in": k,
        "out": n,
        "strict": False,
        "activation": "relu",
        "x": "int32 words",
        "gflop_dense": 2 * m * n * k / 1e9,
        "kept": float(ref.autoregressive_mask(in_deg, out_deg).float().mean()),
    }

    def make(device, dtype) -> Inputs:
        g = torch.Generator().manual_seed(seed)
        x = (torch.rand(m, k, generator=g) < 0.3).to(device=device, dtype=dtype)
        w = _randn((n, k), seed + 1, device, dtype, k**-0.5)
        b = _randn((n,), seed + 2, device, dtype, 0.1)
        t = {
            "x": x,
            "xb": ref.pack_bits(x),
            "w": w,
            "b": b,
            "ind": in_deg.to(device),
            "outd": out_deg.to(device),
            "mask": ref.autoregressive_mask(in_deg, out_deg).to(device=device, dtype=dtype),
        }
        return Inputs(t, [w, b], _randn((m, n), seed + 3, device, dtype))

    def model(I, mode):
        e, words = I.w.element_size(), I.xb.shape[1]
        fwd = 4 * m * words + e * (n * k + m * n + n) + 8 * (k + n)
        bwd = 4 * m * words + e * (2 * m * n + 2 * n * k + n)
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]

    def dense():
        return lambda I: torch.relu(F.linear(I.x, I.w * I.mask, I.b))

    op = lambda I, b: pygen.ops.masked_linear_bits(I.xb, k, I.w, I.b, I.ind, I.outd, False, "relu", backend=b)
    reference = (ref.masked_linear_bits, lambda I: (I.xb, k, I.w, I.b, I.ind, I.outd, False, "relu"))
    return Case(
        FAMILY,
        "masked_linear_bits",
        f"{tag}-l1-bits",
        shape,
        make,
        op,
        reference,
        model,
        "4*M*ceil(K/32) + E*(N*K + M*N + N) fwd; bwd: see bench/made.py",
        {"dense masked": dense},
        backends=BACKENDS,
    )


def _affine_case(s: MADEShape, tag: str, seed: int) -> Case:
    """The MAF layer's output head: params = h . (W * M)^T + b, z = scale * x + shift, log-det."""
    m, k, d = s.batch, s.hidden, s.features
    deg = network_degrees(s, "sorted", multiplier=2)
    in_deg, out_deg = deg[2], deg[3]
    fr = tile_fractions(in_deg, out_deg, True, *GPU_TILE)
    shape = {
        "batch": m,
        "hidden": k,
        "features": d,
        "gflop_dense": 2 * m * 2 * d * k / 1e9,
        "kept": float(ref.autoregressive_mask(in_deg, out_deg, True).float().mean()),
        "zero_tiles": fr["zero"],
        "output": "cat([z, logdet[:, None]], 1)",
    }

    def make(device, dtype) -> Inputs:
        h = _randn((m, k), seed, device, dtype).relu()
        w = _randn((2 * d, k), seed + 1, device, dtype, 0.1 * k**-0.5)
        b = _randn((2 * d,), seed + 2, device, dtype, 0.1)
        x = _randn((m, d), seed + 3, device, dtype)
        mask = ref.autoregressive_mask(in_deg, out_deg, True).to(device=device, dtype=dtype)
        t = {"h": h, "w": w, "b": b, "x": x, "ind": in_deg.to(device), "outd": out_deg.to(device), "mask": mask}
        return Inputs(t, [h, w, b, x], _randn((m, d + 1), seed + 4, device, dtype))

    def cat(z, ld):
        return torch.cat([z, ld[:, None].to(z.dtype)], dim=1)

    def model(I, mode):
        e = I.h.element_size()
        fwd = e * (m * k + 2 * d * k + 2 * d + 2 * m * d + m) + 8 * (k + 2 * d)
        bwd = e * (m * 2 * d + 2 * m * k + 2 * 2 * d * k + 2 * d + 4 * m * d)
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]

    def dense():
        def fn(I):
            p = F.linear(I.h, I.w * I.mask, I.b).view(m, d, 2)
            scale = ref.affine_scale(p[..., 0])
            return cat(scale * I.x + p[..., 1], torch.log(scale).sum(-1))

        return fn

    op = lambda I, b: cat(*pygen.ops.made_affine_forward(I.h, I.w, I.b, I.ind, I.outd, I.x, backend=b))
    reference = (
        lambda h, w, b, i, o, x: cat(*ref.made_affine_forward(h, w, b, i, o, x)),
        lambda I: (I.h, I.w, I.b, I.ind, I.outd, I.x),
    )
    return Case(
        FAMILY,
        "made_affine_forward",
        f"{tag}-maf-head",
        shape,
        make,
        op,
        reference,
        model,
        "E*(M*K + 2D*K + 2D + 2*M*D + M) + degrees fwd (params not written); bwd: see bench/made.py",
        {"dense masked": dense},
        backends=BACKENDS,
    )


# The D-step loop must stay out of dynamo's reach: traced, it is unrolled D times (the compile
# takes minutes). disable(recursive=False) skips only the frame it wraps, so both the driver and
# ref.made_sample (which holds the loop) are wrapped; the network pass they call is compiled.
_eager_sampler = torch.compiler.disable(ref.made_sample, recursive=False)


def _d_pass_driver(noise, weights, biases, degrees):
    """D full passes of the dense-masked network (pygen.ref.made.made_sample)."""
    masks = [
        ref.autoregressive_mask(degrees[l], degrees[l + 1], l == len(weights) - 1).to(weights[0].dtype)
        for l in range(len(weights))
    ]

    def net(x):
        h = x
        for l, (w, b, mk) in enumerate(zip(weights, biases, masks)):
            h = F.linear(h, w * mk, b)
            if l < len(weights) - 1:
                h = torch.relu(h)
        return h

    return _eager_sampler(net, noise, degrees[0], 2, "gaussian")


def _sample_case(s: MADEShape, tag: str, seed: int) -> Case:
    degs = network_degrees(s, "sorted", multiplier=2, hidden=s.sample_hidden)
    d, h, b = s.features, s.sample_hidden, s.samples
    shape = {
        "samples": b,
        "features": d,
        "hidden": [h, h],
        "kind": "gaussian",
        "activation": "relu",
        "gflop_one_pass": 2 * b * (d * h + h * h + h * 2 * d) / 1e9,
    }

    def make(device, dtype) -> Inputs:
        ws = [
            _randn((h, d), seed, device, dtype, d**-0.5),
            _randn((h, h), seed + 1, device, dtype, h**-0.5),
            _randn((2 * d, h), seed + 2, device, dtype, 0.1 * h**-0.5),
        ]
        bs = [_randn((w.shape[0],), seed + 3 + i, device, dtype, 0.1) for i, w in enumerate(ws)]
        noise = _randn((b, d), seed + 9, device, dtype)
        t = {"noise": noise, "weights": ws, "biases": bs, "degrees": [g.to(device) for g in degs]}
        return Inputs(t, [noise], _randn((b, d), seed + 10, device, dtype))

    def model(I, mode):
        e = I.noise.element_size()
        fwd = e * (sum(w.numel() + w.shape[0] for w in I.weights) + 2 * b * d + b * 2 * h)
        return {"fwd": fwd, "bwd": fwd, "fwd+bwd": 2 * fwd}[mode]

    def d_passes():
        return lambda I: _d_pass_driver(I.noise, I.weights, I.biases, I.degrees)

    def step_loop():
        # the per-step loop (one masked_linear launch per layer per step) on the automatic backend:
        # the persistent kernel's own baseline on a GPU
        return lambda I: pygen.ops.made_sample(
            I.weights, I.biases, I.degrees, I.noise, kind="gaussian", activation="relu", persistent=False
        )

    op = lambda I, be: pygen.ops.made_sample(
        I.weights, I.biases, I.degrees, I.noise, kind="gaussian", activation="relu", backend=be
    )
    reference = (
        torch.compiler.disable(_d_pass_driver, recursive=False),
        lambda I: (I.noise, I.weights, I.biases, I.degrees),
    )
    return Case(
        FAMILY,
        "made_sample",
        f"{tag}-gauss",
        shape,
        make,
        op,
        reference,
        model,
        "E*(weights + biases + 2*B*D + B*sum(H)) (each weight once)",
        {"D passes (dense masked)": d_passes, "step loop": step_loop},
        backends=BACKENDS,
    )


def cases(quick: bool = False, device: str | torch.device | None = None) -> list[Case]:
    """The benchmark cases; batch sizes follow ``device`` (default: CUDA when available)."""
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    s = replace(QUICK if quick else DEFAULT, on_cuda=on_cuda)
    tag = ("quick-" if quick else "") + f"made{s.features}"
    d, h = s.features, s.hidden
    deg = network_degrees(s, "sorted")
    nfl = network_degrees(s, "nflows")
    g = torch.Generator().manual_seed(77)
    rnd = torch.rand(h, h, generator=g) < 0.5
    return [
        _layer_case(s, tag, "l1", d, h, deg[0], deg[1], False, "relu", True, 100),
        _bits_case(s, tag, deg[0], deg[1], 100),
        _layer_case(s, tag, "l2", h, h, deg[1], deg[2], False, "relu", False, 200),
        _layer_case(s, tag, "l3", h, d, deg[2], deg[3], True, None, False, 300),
        _layer_case(s, tag, "l2-nflows-order", h, h, nfl[1], nfl[2], False, "relu", False, 200),
        _layer_case(s, tag, "random-mask", h, h, deg[1], deg[2], False, "relu", False, 400, explicit_mask=rnd),
        _affine_case(s, tag, 600),
        _sample_case(s, tag, 500),
    ]
