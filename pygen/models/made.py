"""MADE (Germain et al. 2015), MAF (Papamakarios et al. 2017) and IAF (Kingma et al. 2016) on
pygen's masked autoregressive kernels, gpt-fast style: plain modules and a config dataclass.

MADE takes nflows' MADE arguments (features, hidden_features, context_features, num_blocks,
output_multiplier, use_residual_blocks, random_mask, activation, dropout_probability,
use_batch_norm) and has nflows' structure and state_dict keys::

    h = initial_layer(x) [+ context_layer(context)]        masked, degrees 1..D -> hidden
    h = act(h)                                             (feedforward blocks only)
    feedforward block:  h = dropout(act(linear(bn(h))))
    residual block:     h = h + linear_1(dropout(act(bn_1(linear_0(act(bn_0(h))) [+ ctx]))))
    params = final_layer(h)                                strict mask, D * output_multiplier

Every MaskedLinear is pygen.nn.MaskedLinear (nflows form), so the activation is fused into the
kernel where nothing sits between the matmul and the activation.

pygen extras (keyword-only): ``hidden_order="sorted"`` permutes the hidden units by degree right
after nflows' construction (same random draws, same initial weights, same function: only the
unit order differs), so the masks' zero tiles form a staircase the kernels skip;
``hidden_order="nflows"`` keeps nflows' order (load an nflows state_dict, then call
``sort_hidden_()``, which returns the permutations). ``backend=None`` selects the op backend.

Heads:
    BinaryMADE     Bernoulli logits, log_prob(x) = sum_d log Bern(x_d | sigmoid(logit_d))
    GaussianMADE   params (mu_d, alpha_d) interleaved, x_d = mu_d + exp(alpha_d) e_d (MAF paper)
    MaskedAffineAutoregressiveTransform   nflows' MAF layer: forward(x) = (scale x + shift,
        sum log scale) with scale = sigmoid(a + 2) + 1e-3; the output layer, the affine map and
        the log-det sum run as one kernel (pygen.ops.made_affine_forward); inverse by sampling
    InverseAutoregressiveTransform        the IAF layer (the MAF layer run backwards)
    MAF, IAF       stacks of those layers with reversed orders between them, N(0, I) base

Sampling (``sample`` and the inverses) uses pygen.ops.made_sample: every hidden unit is computed
once, at the step its degree allows (see pygen/ops/_made_sample.py), with eval-mode semantics
(dropout off, batch norm with running statistics, folded into the weights). Residual blocks with
batch norm are the one configuration the incremental sampler does not take; it then runs D full
passes (pygen.ref.made.made_sample).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init
from torch.types import Device

from .. import ops
from ..nn.made import MaskedLinear
from ..ref import made as ref

__all__ = [
    "MADE",
    "BinaryMADE",
    "GaussianMADE",
    "MaskedAffineAutoregressiveTransform",
    "InverseAutoregressiveTransform",
    "MAF",
    "IAF",
    "MADEConfig",
    "MADEProfileModel",
    "activation_name",
    "set_backend",
]


# An activation: a fused-kernel name (pygen.ref.made.ACTIVATIONS), a function or a module.
Activation = str | Callable[[torch.Tensor], torch.Tensor]


def activation_name(activation: Activation) -> str | None:
    """The fused-kernel name of an activation callable / module / name, or None (not fusable)."""
    if isinstance(activation, str):
        if activation not in ref.ACTIVATIONS:
            raise ValueError(f"activation must be a callable or one of {ref.ACTIVATIONS}, got {activation!r}")
        return activation
    table = {F.relu: "relu", torch.relu: "relu", F.elu: "elu", torch.tanh: "tanh", F.tanh: "tanh", F.gelu: "gelu"}
    for fn, nm in table.items():
        if activation is fn:
            return nm
    if isinstance(activation, nn.ReLU):
        return "relu"
    if isinstance(activation, nn.ELU) and activation.alpha == 1.0:
        return "elu"
    if isinstance(activation, nn.Tanh):
        return "tanh"
    if isinstance(activation, nn.GELU) and activation.approximate == "none":
        return "gelu"
    return None


def _callable(activation: Activation) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(activation, str):
        return lambda t: ref.apply_activation(t, activation)
    return activation


def _masked(
    in_degrees: torch.Tensor, out_features: int, features: int, random_mask: bool, backend: str | None, is_output=False
) -> MaskedLinear:
    """nflows' MaskedLinear over ``features`` autoregressive inputs (hidden unless ``is_output``)."""
    return MaskedLinear(in_degrees, out_features, features, random_mask, is_output, backend=backend)


def set_backend(model: nn.Module, backend: str | None) -> nn.Module:
    """Point every pygen MaskedLinear of ``model`` at ``backend`` (None: automatic choice)."""
    for m in model.modules():
        if isinstance(m, MaskedLinear):
            m.backend = backend
    return model


class _MaskedBlock(nn.Module):
    """What nflows' two MADE blocks share: their arguments, the activation and the dropout;
    ``_build`` makes the layers. ``zero_initialization`` (nflows' default False for the feedforward
    block, True for the residual one) is read by the residual block only."""

    def __init__(
        self,
        in_degrees: torch.Tensor,
        autoregressive_features: int,
        context_features: int | None = None,
        random_mask: bool = False,
        activation: Activation = F.relu,
        dropout_probability: float = 0.0,
        use_batch_norm: bool = False,
        zero_initialization: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        args = (in_degrees, autoregressive_features, context_features, random_mask, use_batch_norm, zero_initialization)
        self._build(*args, backend)
        self.activation = activation
        self.dropout = nn.Dropout(p=dropout_probability)

    def _build(
        self, in_degrees, autoregressive_features, context_features, random_mask, use_batch_norm, zero_init, backend
    ):
        raise NotImplementedError


class MaskedFeedforwardBlock(_MaskedBlock):
    """nflows' MaskedFeedforwardBlock: dropout(act(linear(bn(h)))), hidden -> hidden."""

    def _build(
        self, in_degrees, autoregressive_features, context_features, random_mask, use_batch_norm, zero_init, backend
    ):
        features = len(in_degrees)
        self.batch_norm = nn.BatchNorm1d(features, eps=1e-3) if use_batch_norm else None
        self.linear = _masked(in_degrees, features, autoregressive_features, random_mask, backend)
        self.degrees = self.linear.degrees

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.batch_norm(inputs) if self.batch_norm is not None else inputs
        name = activation_name(self.activation)
        h = self.linear(h, activation=name) if name else _callable(self.activation)(self.linear(h))
        return self.dropout(h)


class MaskedResidualBlock(_MaskedBlock):
    """nflows' MaskedResidualBlock: h + linear_1(dropout(act(bn_1(linear_0(act(bn_0(h))) + ctx))))."""

    def _build(
        self, in_degrees, autoregressive_features, context_features, random_mask, use_batch_norm, zero_init, backend
    ):
        if random_mask:
            raise ValueError("Masked residual block can't be used with random masks.")
        features = len(in_degrees)
        if context_features is not None:
            self.context_layer = nn.Linear(context_features, features)
        self.use_batch_norm = use_batch_norm
        if use_batch_norm:
            self.batch_norm_layers = nn.ModuleList([nn.BatchNorm1d(features, eps=1e-3) for _ in range(2)])
        linear_0 = _masked(in_degrees, features, autoregressive_features, False, backend)
        linear_1 = _masked(linear_0.degrees, features, autoregressive_features, False, backend)
        self.linear_layers = nn.ModuleList([linear_0, linear_1])
        self.degrees = linear_1.degrees
        if not bool(torch.all(self.degrees >= in_degrees.to(self.degrees.device))):
            raise RuntimeError(
                "In a masked residual block, the output degrees can't be less than the corresponding input degrees."
            )
        if zero_init:  # nflows draws these after the layers are built (module and RNG order kept)
            init.uniform_(linear_1.weight, a=-1e-3, b=1e-3)
            init.uniform_(linear_1.bias, a=-1e-3, b=1e-3)

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        act = _callable(self.activation)
        name = activation_name(self.activation)
        h = self.batch_norm_layers[0](inputs) if self.use_batch_norm else inputs
        h = act(h)
        fuse = name is not None and context is None and not self.use_batch_norm
        h = self.linear_layers[0](h, activation=name if fuse else None)
        if context is not None:
            h = h + self.context_layer(context)
        if self.use_batch_norm:
            h = self.batch_norm_layers[1](h)
        if not fuse:
            h = act(h)
        h = self.dropout(h)
        return inputs + self.linear_layers[1](h)


class MADE(nn.Module):
    """nflows' MADE on pygen kernels (module docstring). forward(inputs, context=None) returns the
    [B, features * output_multiplier] autoregressive parameters (outputs of input d at columns
    d*m ... d*m + m - 1)."""

    def __init__(
        self,
        features: int,
        hidden_features: int,
        context_features: int | None = None,
        num_blocks: int = 2,
        output_multiplier: int = 1,
        use_residual_blocks: bool = True,
        random_mask: bool = False,
        activation: Activation = F.relu,
        dropout_probability: float = 0.0,
        use_batch_norm: bool = False,
        *,
        hidden_order: str = "sorted",
        backend: str | None = None,
    ) -> None:
        if use_residual_blocks and random_mask:
            raise ValueError("Residual blocks can't be used with random masks.")
        if hidden_order not in ("sorted", "nflows"):
            raise ValueError(f"hidden_order must be 'sorted' or 'nflows', got {hidden_order!r}")
        super().__init__()
        self.features, self.output_multiplier = features, output_multiplier
        self.initial_layer = _masked(ref.input_degrees(features), hidden_features, features, random_mask, backend)
        if context_features is not None:
            self.context_layer = nn.Linear(context_features, hidden_features)
        self.use_residual_blocks = use_residual_blocks
        self.use_batch_norm = use_batch_norm
        self.activation = activation
        block = MaskedResidualBlock if use_residual_blocks else MaskedFeedforwardBlock
        blocks, prev = [], self.initial_layer.degrees
        block_args = (context_features, random_mask, activation, dropout_probability, use_batch_norm)
        for _ in range(num_blocks):
            blocks.append(block(prev, features, *block_args, backend=backend))
            prev = blocks[-1].degrees
        self.blocks = nn.ModuleList(blocks)
        self.final_layer = _masked(prev, features * output_multiplier, features, random_mask, backend, is_output=True)
        if hidden_order == "sorted":
            self.sort_hidden_()

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.final_layer(self.hidden(inputs, context))

    def hidden(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The input of final_layer (everything but the output layer)."""
        name = activation_name(self.activation)
        fuse = name is not None and context is None and not self.use_residual_blocks
        h = self.initial_layer(inputs, activation=name if fuse else None)
        if context is not None:
            h = h + self.context_layer(context)
        if not self.use_residual_blocks and not fuse:
            h = _callable(self.activation)(h)
        for blk in self.blocks:
            h = blk(h, context)
        return h

    # ---- hidden-unit order -----------------------------------------------------------------------
    def _hidden_layers(self):
        """The masked layers in order: (layer, index of the hidden space it reads, index it writes);
        hidden space k is the output of the k-th hidden layer (residual networks have one)."""
        if self.use_residual_blocks:
            layers = [(self.initial_layer, None, 0)]
            for blk in self.blocks:
                layers += [(blk.linear_layers[0], 0, 0), (blk.linear_layers[1], 0, 0)]
            return layers + [(self.final_layer, 0, None)], 1
        layers = [(self.initial_layer, None, 0)]
        for k, blk in enumerate(self.blocks):
            layers.append((blk.linear, k, k + 1))
        return layers + [(self.final_layer, len(self.blocks), None)], len(self.blocks) + 1

    @torch.no_grad()
    def sort_hidden_(self) -> list[torch.Tensor]:
        """Permute every hidden layer's units so their degrees are non-decreasing (weights, biases,
        masks, degrees, context layers and batch-norm statistics move together; the function is
        unchanged). Returns one permutation per hidden space (new unit u = old unit perm[u]); a
        residual MADE has one hidden space shared by all its layers."""
        layers, n_spaces = self._hidden_layers()
        perms = [None] * n_spaces
        for layer, _, dst in layers:
            if dst is not None and perms[dst] is None:
                perms[dst] = ref.degree_sort_permutation(layer.degrees.cpu())
        for layer, src, dst in layers:
            layer.permute_(rows=None if dst is None else perms[dst], cols=None if src is None else perms[src])
        p0 = perms[0].to(self.initial_layer.weight.device)
        if hasattr(self, "context_layer"):
            self.context_layer.weight.copy_(self.context_layer.weight[p0])
            self.context_layer.bias.copy_(self.context_layer.bias[p0])
        for k, blk in enumerate(self.blocks):
            if self.use_residual_blocks:
                if hasattr(blk, "context_layer"):
                    blk.context_layer.weight.copy_(blk.context_layer.weight[p0])
                    blk.context_layer.bias.copy_(blk.context_layer.bias[p0])
                bns = list(blk.batch_norm_layers) if blk.use_batch_norm else []
                p = p0
            else:
                bns = [blk.batch_norm] if blk.batch_norm is not None else []
                p = perms[k].to(p0.device)
            for bn in bns:
                for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    if t is not None:
                        t.copy_(t[p])
        for blk in self.blocks:
            blk.degrees = blk.linear_layers[1].degrees if self.use_residual_blocks else blk.linear.degrees
        return perms

    # ---- sampling ----------------------------------------------------------------------------------
    def _bn_affine(self, bn):
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return a, bn.bias - bn.running_mean * a

    def sampling_network(self, context: torch.Tensor | None = None) -> tuple | None:
        """(weights, biases, degrees, context_terms, residual, pre_activation) for
        pygen.ops.made_sample with eval-mode semantics (batch norm folded: into the next linear
        layer where it precedes one, into ``pre_activation`` where it precedes a residual block's
        activation), or None when the incremental sampler cannot run this network."""
        if activation_name(self.activation) is None:
            return None
        layers, _ = self._hidden_layers()
        args = [layer.kernel_args() for layer, _, _ in layers]
        if any(a[0] != "degrees" for a in args):
            return None
        degrees = [args[0][1]] + [a[2] for a in args]
        for l in range(1, len(args)):
            if not torch.equal(args[l][1], degrees[l]):
                return None
        weights = [layer.weight for layer, _, _ in layers]
        biases = [layer.bias for layer, _, _ in layers]
        ctx = [None] * len(layers)
        if context is not None:
            ctx[0] = self.context_layer(context)
        if self.use_residual_blocks:
            if context is not None:
                for k, blk in enumerate(self.blocks):
                    ctx[1 + 2 * k] = blk.context_layer(context)
        elif self.use_batch_norm:
            for k, blk in enumerate(self.blocks):  # bn on the block input: fold into its linear
                a, c = self._bn_affine(blk.batch_norm)
                w = weights[k + 1]
                wm = w * ref.autoregressive_mask(degrees[k + 1], degrees[k + 2]).to(w.dtype)
                biases[k + 1] = (biases[k + 1] if biases[k + 1] is not None else 0) + wm @ c
                weights[k + 1] = w * a[None, :]
        pre_act = None
        if self.use_residual_blocks and self.use_batch_norm:
            # block: s + W_b act(bn_1(W_a act(bn_0(s)) + b_a + ctx)) + b_b. bn_1 folds into W_a's
            # rows (and its bias and context term); bn_0 sits between the residual stream and the
            # activation, so it becomes the sampler's per-unit affine before that activation.
            pre_act = []
            for k, blk in enumerate(self.blocks):
                pre_act.append(self._bn_affine(blk.batch_norm_layers[0]))
                a1, c1 = self._bn_affine(blk.batch_norm_layers[1])
                i = 1 + 2 * k
                weights[i] = weights[i] * a1[:, None]
                biases[i] = (biases[i] * a1 if biases[i] is not None else 0) + c1
                if ctx[i] is not None:
                    ctx[i] = ctx[i] * a1
        return weights, biases, degrees, ctx, self.use_residual_blocks, pre_act

    def sample_with_noise(
        self, noise: torch.Tensor, kind: str, context: torch.Tensor | None = None, return_params: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Autoregressive samples for per-dimension ``noise`` [B, D] (pygen.ref.made.STEPS[kind]).
        Differentiable (the MAF inverse / IAF forward is built on it); ``sample`` runs it under
        no_grad."""
        net = self.sampling_network(context)
        name = activation_name(self.activation)
        backend = self.initial_layer.backend
        if net is not None:
            weights, biases, degrees, ctx, residual, pre_act = net
            return ops.made_sample(
                weights,
                biases,
                degrees,
                noise,
                kind=kind,
                activation=name,
                context_terms=ctx,
                residual=residual,
                pre_activation=pre_act,
                backend=backend,
                return_params=return_params,
            )
        was = self.training
        self.eval()
        try:
            x = ref.made_sample(
                lambda t: self(t, context), noise, ref.input_degrees(self.features), self.output_multiplier, kind
            )
            return (x, self(x, context)) if return_params else x
        finally:
            self.train(was)

    def set_backend(self, backend: str | None) -> MADE:
        return set_backend(self, backend)


class _HeadMADE(MADE):
    """A MADE with the output multiplier of its head (``_multiplier``), built from nflows' head
    arguments: MADE's, less ``output_multiplier``."""

    _multiplier = 1

    def __init__(
        self,
        features: int,
        hidden_features: int,
        context_features: int | None = None,
        num_blocks: int = 2,
        use_residual_blocks: bool = True,
        random_mask: bool = False,
        activation: Activation = F.relu,
        dropout_probability: float = 0.0,
        use_batch_norm: bool = False,
        **kw: Any,
    ) -> None:
        args = (use_residual_blocks, random_mask, activation, dropout_probability, use_batch_norm)
        super().__init__(features, hidden_features, context_features, num_blocks, self._multiplier, *args, **kw)


class _DensityMADE(_HeadMADE):
    """A MADE head with a likelihood ``_log_prob(params, x)`` and a sampler: per-dimension noise
    from ``_draw`` (torch.rand / torch.randn) through the step ``_kind`` (pygen.ref.made.STEPS)."""

    _log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    _draw: Callable[..., torch.Tensor]
    _kind: str

    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self._log_prob(self(x, context), x)

    @torch.no_grad()
    def sample(
        self, num_samples: int | None = None, context: torch.Tensor | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Samples [B, D]: of ``noise`` when given, else of ``num_samples`` (or context's batch) draws."""
        b = _batch(num_samples, context, noise)
        w = self.initial_layer.weight
        u = noise if noise is not None else self._draw(b, self.features, device=w.device, dtype=w.dtype)
        return self.sample_with_noise(u, self._kind, context)


class BinaryMADE(_DensityMADE):
    """MADE with one Bernoulli logit per dimension (the MADE paper's binary model); sample noise is
    uniform on [0, 1)."""

    _log_prob = staticmethod(ref.bernoulli_log_prob)
    _draw = staticmethod(torch.rand)
    _kind = "bernoulli"


class GaussianMADE(_DensityMADE):
    """MADE with a Gaussian conditional per dimension: params (mu_d, alpha_d), sigma = exp(alpha);
    sample noise is standard normal."""

    _multiplier = 2
    _log_prob = staticmethod(ref.gaussian_log_prob)
    _draw = staticmethod(torch.randn)
    _kind = "gaussian"


def _batch(num_samples, context, noise) -> int:
    sizes = {
        n
        for n in (num_samples, None if context is None else context.shape[0], None if noise is None else noise.shape[0])
        if n is not None
    }
    if len(sizes) != 1:
        raise ValueError(f"sample: give num_samples, context or noise with one batch size, got {sorted(sizes)}")
    return sizes.pop()


class _AffineNet(_HeadMADE):
    """The MAF layer's network: (unconstrained scale, shift) per dimension, interleaved."""

    _multiplier = 2


class MaskedAffineAutoregressiveTransform(nn.Module):
    """nflows' MAF layer: forward(x) -> (z = scale * x + shift, sum log scale), one network pass;
    inverse(z) -> (x, -sum log scale) by autoregressive sampling (each hidden unit once).
    Arguments: nflows' (features, hidden_features, context_features=None, num_blocks=2,
    use_residual_blocks=True, random_mask=False, activation=F.relu, dropout_probability=0.0,
    use_batch_norm=False), i.e. those of BinaryMADE / GaussianMADE, and their keyword-only extras."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__()
        self.autoregressive_net = _AffineNet(*args, **kw)
        self.features = self.autoregressive_net.features

    @staticmethod
    def _scale_shift(params, features):
        p = params.view(-1, features, 2)
        return ref.affine_scale(p[..., 0]), p[..., 1]

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.autoregressive_net
        h = net.hidden(inputs, context)
        args = net.final_layer.kernel_args() if not torch.compiler.is_compiling() else ("mask",)
        if args[0] == "degrees" and args[3] and inputs.dim() == 2:
            # output head, affine transform and log-det sum in one kernel (pygen.ops.made_affine_forward)
            return ops.made_affine_forward(
                h,
                net.final_layer.weight,
                net.final_layer.bias,
                args[1],
                args[2],
                inputs,
                backend=net.final_layer.backend,
            )
        scale, shift = self._scale_shift(net.final_layer(h), self.features)
        return scale * inputs + shift, torch.log(scale).sum(dim=-1)

    def inverse(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, params = self.autoregressive_net.sample_with_noise(inputs, "affine", context, return_params=True)
        scale, _ = self._scale_shift(params, self.features)
        return x, -torch.log(scale).sum(dim=-1)


class InverseAutoregressiveTransform(nn.Module):
    """The IAF layer: the MAF layer run backwards (forward = MAF inverse, inverse = MAF forward),
    so sampling through it is one network pass and density evaluation is autoregressive."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__()
        self.transform = MaskedAffineAutoregressiveTransform(*args, **kw)

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform.inverse(inputs, context)

    def inverse(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(inputs, context)


class _Flow(nn.Module):
    """nflows' MaskedAutoregressiveFlow layout without batch norm between layers: every layer
    (``_layer``) is preceded by a reversal of the feature order; N(0, I) base. Each layer's forward
    direction is data -> noise."""

    _layer: type[nn.Module]

    def __init__(
        self,
        features: int,
        hidden_features: int,
        num_layers: int,
        num_blocks_per_layer: int,
        use_residual_blocks: bool = True,
        use_random_masks: bool = False,
        activation: Activation = F.relu,
        dropout_probability: float = 0.0,
        context_features: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__()
        self.features = features
        net = (use_residual_blocks, use_random_masks, activation, dropout_probability, False)  # no batch norm
        self.layers = nn.ModuleList(
            self._layer(features, hidden_features, context_features, num_blocks_per_layer, *net, **kw)
            for _ in range(num_layers)
        )

    def transform_to_noise(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, logdet) with z = f(x) through every layer."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x.flip(-1), context)
            logdet = logdet + ld
        return x, logdet

    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        z, logdet = self.transform_to_noise(x, context)
        return -0.5 * (z * z).sum(-1) - 0.5 * self.features * math.log(2 * math.pi) + logdet

    @torch.no_grad()
    def sample(self, num_samples: int, context: torch.Tensor | None = None) -> torch.Tensor:
        w = next(self.parameters())
        x = torch.randn(num_samples, self.features, device=w.device, dtype=w.dtype)
        for layer in reversed(self.layers):
            x, _ = layer.inverse(x, context)
            x = x.flip(-1)
        return x


class MAF(_Flow):
    """Masked autoregressive flow: density evaluation in one pass per layer, sampling
    autoregressive (each hidden unit computed once per layer)."""

    _layer = MaskedAffineAutoregressiveTransform


class IAF(_Flow):
    """Inverse autoregressive flow: sampling in one pass per layer, density evaluation autoregressive."""

    _layer = InverseAutoregressiveTransform


# ---- pygen profile ------------------------------------------------------------------------------
@dataclass(frozen=True)
class MADEConfig:
    """The binary MADE of the benchmark: 784-dim binarized MNIST-sized data, two hidden layers of
    2048 (nflows: one feedforward block after the initial layer), batch 4096."""

    features: int = 784
    hidden_features: int = 2048
    num_blocks: int = 1
    use_residual_blocks: bool = False
    activation: str = "relu"
    batch: int = 4096

    @classmethod
    def quick(cls) -> MADEConfig:
        return cls(features=16, hidden_features=64, batch=32)


class MADEProfileModel(nn.Module):
    """BinaryMADE log-likelihood of a batch of binary vectors (``pygen profile made``)."""

    def __init__(self, cfg: MADEConfig, backend: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.made = BinaryMADE(
            cfg.features,
            cfg.hidden_features,
            num_blocks=cfg.num_blocks,
            use_residual_blocks=cfg.use_residual_blocks,
            activation=cfg.activation,
            backend=backend,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.made.log_prob(x)

    @staticmethod
    def example_inputs(
        cfg: MADEConfig, device: Device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> tuple[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return ((torch.rand(cfg.batch, cfg.features, generator=g) < 0.3).to(device=device, dtype=dtype),)


MODELS = {"made": (MADEProfileModel, MADEConfig)}
