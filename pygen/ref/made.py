"""Masked autoregressive layers (MADE, Germain et al. 2015; MAF, Papamakarios et al. 2017; IAF,
Kingma et al. 2016) in plain PyTorch: the test oracle (run it in float64), the ``reference``
backend, and the readable statement of the math behind pygen.ops.masked_linear / made_sample.

Layouts
-------
x        : [..., I]   input features (any leading dims)
weight   : [O, I]     nn.Linear layout (out_features, in_features)
bias     : [O] or None
degrees  : 1-D integer tensors, in_degrees [I], out_degrees [O]
mask     : [O, I] bool (explicit-mask form, nflows / pyro / zuko style)
output   : [..., O]   the dtype of x

Masked linear layer
-------------------
    M[o, i] = out_deg[o] >= in_deg[i]          (strict=False: hidden layers)
    M[o, i] = out_deg[o] >  in_deg[i]          (strict=True: MADE's output layer)
    y       = act(x . (W * M)^T + b)           act in {none, relu, elu (alpha 1), tanh,
                                                       gelu (exact, erf form)}

Gradients (g = dL/dy * act'(z), z the pre-activation):
    dx = g . (W * M)          dW = M * (g^T . x)          db = sum over rows of g

Binary inputs may come bit-packed (``pack_bits``: int32 words, feature k = bit k % 32 of word
k // 32); ``masked_linear_bits`` is then the sum of the weight columns of the set bits.

Every mask of this form has nested rows (the inputs seen by a unit are a prefix in degree
order), and every mask with nested rows has this form: ``degrees_from_mask`` recovers degrees
(out_deg = row sums, in_deg[i] = the smallest row sum among rows that see i) or returns None.

Degree assignment (MADE paper, as nflows assigns them)
------------------------------------------------------
    inputs           : 1, 2, ..., D
    hidden, ordered  : (k mod max(1, D-1)) + min(1, D-1) for unit k = 0, 1, ...
    hidden, random   : uniform integers in [min(previous degrees.min(), D-1), D-1]
    outputs          : each input degree repeated ``output_multiplier`` times, adjacent
                       (d, d, ..., d+1, d+1, ...), used with strict=True
Output d then depends only on inputs of degree < d: the network is autoregressive.
Permuting the hidden units of a layer (rows of its W, b and columns of the next W) leaves the
function unchanged; sorting them by degree (``degree_sort_permutation``) makes the zero blocks of
the masks a staircase, which the Triton kernels skip.

Autoregressive sampling (reference: D sequential passes)
-------------------------------------------------------
    x = 0;  for d in the order of increasing input degree:
        p     = network(x)[:, d, :]              (the d-th group of output_multiplier outputs)
        x[:, d] = step(p, noise[:, d])
with steps ``bernoulli_step`` (x = [u < sigmoid(logit)]), ``gaussian_step`` (x = mu + exp(alpha) e,
MAF paper) and ``affine_inverse_step`` (nflows' MAF inverse: x = (z - shift) / scale,
scale = sigmoid(a + 2) + 1e-3). pygen.ops.made_sample computes the same samples with each
hidden unit evaluated once.

MAF output head (``made_affine_forward``)
-----------------------------------------
    params = h . (W * M)^T + b  (strict, rows 2d, 2d+1 = (a_d, shift_d)),  scale = sigmoid(a + 2) + 1e-3
    z = scale * x + shift,   logdet = sum_d log(scale_d)      (the triangular Jacobian's log-det)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "relu", "elu", "tanh", "gelu")
AFFINE_SCALE_SHIFT = 2.0  # nflows: scale = sigmoid(unconstrained + 2) + 1e-3
AFFINE_EPS = 1e-3


# ---- layers -----------------------------------------------------------------------------------
def apply_activation(z: torch.Tensor, name: str | None) -> torch.Tensor:
    """The fused activations of masked_linear (``None`` and ``"none"`` are the identity)."""
    if name is None or name == "none":
        return z
    if name == "relu":
        return torch.relu(z)
    if name == "elu":
        return F.elu(z)
    if name == "tanh":
        return torch.tanh(z)
    if name == "gelu":
        return F.gelu(z)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def autoregressive_mask(in_degrees: torch.Tensor, out_degrees: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """M[o, i] = out_deg[o] >= in_deg[i] (> when strict), bool [O, I]."""
    o = out_degrees.reshape(-1, 1)
    i = in_degrees.reshape(1, -1)
    return o > i if strict else o >= i


def masked_matmul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor, activation: str | None = None
) -> torch.Tensor:
    """act(x . (W * M)^T + b) for an explicit [O, I] mask (bool or 0/1 numbers)."""
    w = weight * mask.to(weight.dtype)
    return apply_activation(F.linear(x, w, bias), activation)


def masked_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_degrees: torch.Tensor,
    out_degrees: torch.Tensor,
    strict: bool = False,
    activation: str | None = None,
) -> torch.Tensor:
    """y = act(x . (W * M)^T + b), M from the degrees (module docstring)."""
    mask = autoregressive_mask(in_degrees.to(weight.device), out_degrees.to(weight.device), strict)
    return masked_matmul(x, weight, bias, mask, activation)


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """Binary features [..., K] (0 / 1, any dtype) -> int32 words [..., ceil(K / 32)]: feature k is
    bit k % 32 of word k // 32 (two's complement, so bit 31 makes a word negative)."""
    k = x.shape[-1]
    bits = (x != 0).to(torch.int64)
    bits = F.pad(bits, (0, -k % 32)).view(*x.shape[:-1], -(-k // 32), 32)  # sized: a 0 batch dim is fine
    words = (bits << torch.arange(32, device=x.device)).sum(dim=-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_bits(words: torch.Tensor, features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The inverse of pack_bits: [..., ceil(K / 32)] int32 -> [..., K] of 0 / 1 in ``dtype``."""
    bits = (words.to(torch.int64)[..., None] >> torch.arange(32, device=words.device)) & 1
    return bits.reshape(*words.shape[:-1], words.shape[-1] * 32)[..., :features].to(dtype)


def masked_linear_bits(
    x_bits: torch.Tensor,
    features: int,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_degrees: torch.Tensor,
    out_degrees: torch.Tensor,
    strict: bool = False,
    activation: str | None = None,
) -> torch.Tensor:
    """masked_linear of bit-packed binary inputs: act(sum over set bits i of (W * M)[:, i] + b)."""
    return masked_linear(
        unpack_bits(x_bits, features, weight.dtype), weight, bias, in_degrees, out_degrees, strict, activation
    )


# ---- degrees ----------------------------------------------------------------------------------
def input_degrees(features: int, device=None) -> torch.Tensor:
    """1, ..., D (int64)."""
    return torch.arange(1, features + 1, device=device)


def hidden_degrees(
    features: int,
    hidden: int,
    previous: torch.Tensor | None = None,
    random: bool = False,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """Degrees of a hidden layer of width ``hidden`` in a MADE over ``features`` inputs."""
    if random:
        prev_min = int(previous.min()) if previous is not None and previous.numel() else 1
        low = min(prev_min, features - 1)
        return torch.randint(low, features, (hidden,), generator=generator).to(device)
    top, bottom = max(1, features - 1), min(1, features - 1)
    return torch.arange(hidden, device=device) % top + bottom


def output_degrees(features: int, output_multiplier: int = 1, device=None) -> torch.Tensor:
    """Input degrees, each repeated ``output_multiplier`` times in adjacent positions."""
    return input_degrees(features, device).repeat_interleave(output_multiplier)


def degree_sort_permutation(degrees: torch.Tensor) -> torch.Tensor:
    """A stable permutation ``p`` with degrees[p] non-decreasing: apply it to the rows of a hidden
    layer's weight and bias (and its degrees) and to the columns of the next layer's weight."""
    return torch.sort(degrees, stable=True).indices


def degrees_from_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(in_degrees [I], out_degrees [O]) with ``autoregressive_mask(in, out) == mask``, or None when
    the rows of ``mask`` are not nested (no degree assignment reproduces it).

    out_deg[o] = number of inputs row o sees; in_deg[i] = min over the rows that see i of their
    out_deg (rows' sizes + 1 when no row sees i). Degrees are int64 on the mask's device.
    """
    m = mask.to(torch.bool)
    if m.dim() != 2:
        raise ValueError(f"mask must be 2-D [out_features, in_features], got shape {tuple(m.shape)}")
    out_deg = m.sum(dim=1)
    big = torch.full_like(out_deg, m.shape[1] + 1)
    in_deg = (
        torch.where(m, out_deg.view(-1, 1), big.view(-1, 1)).amin(dim=0)
        if m.shape[0]
        else torch.full((m.shape[1],), 1, dtype=torch.int64, device=m.device)
    )
    if not torch.equal(autoregressive_mask(in_deg, out_deg), m):
        return None
    return in_deg, out_deg


def connectivity(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """C[o, i] = True when some path through the masked layers links input i to output o (bool)."""
    reach = masks[0].to(torch.float64)
    for m in masks[1:]:
        reach = (m.to(torch.float64) @ reach).clamp_max(1.0)
    return reach > 0


def is_autoregressive(masks: Sequence[torch.Tensor], in_degrees: torch.Tensor, out_degrees: torch.Tensor) -> bool:
    """True when every output o reaches only inputs of strictly smaller degree."""
    allowed = autoregressive_mask(in_degrees, out_degrees, strict=True)
    return not bool((connectivity(masks) & ~allowed).any())


# ---- a feedforward MADE -----------------------------------------------------------------------
def made_forward(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    degrees: Sequence[torch.Tensor],
    activation: str | None = "relu",
    context_terms: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Feedforward MADE: h_0 = x, h_l = act(h_{l-1} . (W_l * M_l)^T + b_l + c_l) for hidden layers,
    output = h_{L-1} . (W_L * M_L)^T + b_L with a strict mask. ``degrees`` holds L+1 vectors
    (input degrees first, output degrees last); ``context_terms[l]`` is an optional additive
    pre-activation term of hidden layer l (e.g. a linear function of a conditioning context)."""
    L = len(weights)
    h = x
    for l in range(L):
        last = l == L - 1
        z = masked_linear(h, weights[l], biases[l], degrees[l], degrees[l + 1], strict=last)
        if context_terms is not None and l < len(context_terms) and context_terms[l] is not None:
            z = z + context_terms[l]
        h = z if last else apply_activation(z, activation)
    return h


# ---- sampling ---------------------------------------------------------------------------------
def bernoulli_step(params: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Binary MADE: x = 1 when the uniform ``noise`` < sigmoid(logit)."""
    return (noise < torch.sigmoid(params[..., 0])).to(params.dtype)


def gaussian_step(params: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Gaussian MADE (MAF paper): x = mu + exp(alpha) * e, params (mu, alpha), e ~ N(0, 1)."""
    return params[..., 0] + torch.exp(params[..., 1]) * noise


def affine_scale(unconstrained: torch.Tensor) -> torch.Tensor:
    """nflows' affine autoregressive scale: sigmoid(a + 2) + 1e-3 (in (1e-3, 1 + 1e-3))."""
    return torch.sigmoid(unconstrained + AFFINE_SCALE_SHIFT) + AFFINE_EPS


def affine_inverse_step(params: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """nflows' MAF inverse for one dimension: x = (z - shift) / scale, params (a, shift)."""
    return (noise - params[..., 1]) / affine_scale(params[..., 0])


def made_affine_forward(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_degrees: torch.Tensor,
    out_degrees: torch.Tensor,
    x: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """nflows' MAF layer from its last hidden layer h [B, K]: params = masked_linear(h, W, b, strict)
    with W [2D, K] (rows 2d, 2d+1 = unconstrained scale a_d and shift of input d), then
    z = scale * x + shift with scale = sigmoid(a + 2) + 1e-3, and logdet = sum_d log(scale_d)."""
    p = masked_linear(h, weight, bias, in_degrees, out_degrees, strict=True).view(*x.shape, 2)
    scale = affine_scale(p[..., 0])
    return scale * x + p[..., 1], torch.log(scale).sum(dim=-1)


STEPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bernoulli": bernoulli_step,
    "gaussian": gaussian_step,
    "affine": affine_inverse_step,
}


def made_sample(
    network: Callable[[torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    in_degrees: torch.Tensor,
    output_multiplier: int,
    kind: str = "bernoulli",
) -> torch.Tensor:
    """Autoregressive sampling with D full passes of ``network`` ([B, D] -> [B, D * m], outputs of
    dimension d at columns d*m ... d*m + m - 1). Dimensions are filled in order of increasing
    input degree; ``noise`` [B, D] is the per-dimension randomness of ``kind``'s step."""
    step = STEPS[kind]
    b, d = noise.shape
    x = noise.new_zeros((b, d))
    order = torch.sort(in_degrees.cpu(), stable=True).indices.tolist()
    for j in order:
        params = network(x).view(b, d, output_multiplier)
        x = x.clone()
        x[:, j] = step(params[:, j, :], noise[:, j])
    return x


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_d log Bernoulli(x_d | sigmoid(logit_d)): [B]."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=-1)


def gaussian_log_prob(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_d log N(x_d; mu_d, exp(alpha_d)^2) for interleaved params [B, D*2]: [B]."""
    p = params.view(*x.shape, 2)
    mu, alpha = p[..., 0], p[..., 1]
    e = (x - mu) * torch.exp(-alpha)
    return (-0.5 * e * e - alpha - 0.5 * math.log(2 * math.pi)).sum(dim=-1)
