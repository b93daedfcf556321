"""pygen's MoE in Hugging Face transformers 5.x models, two ways.

1. Experts implementation (no module swap). transformers dispatches the expert MLP of MoE models
   through ``transformers.integrations.moe.ExpertsInterface`` (the classes decorated with
   ``@use_experts_implementation``, selected by ``config._experts_implementation``). ``register()``
   (run on import of this module) adds pygen's fused_moe there under the name ``"pygen"``:

       import pygen.integrations.transformers_moe          # registers "pygen"
       model = AutoModelForCausalLM.from_pretrained(path, experts_implementation="pygen")
       # or, on a loaded model: model.set_experts_implementation("pygen")

   The experts module keeps its parameters (gate_up_proj [E, 2I, H], down_proj [E, H, I]);
   only its forward changes: ``fused_moe(hidden, gate_up_proj, down_proj, top_k_weights,
   top_k_index, activation)``. The router stays transformers'. Supported experts layouts: gated
   (has_gate), concatenated [gate; up] rows, not transposed, no biases, no post-expert norm,
   the default gate function, activation silu / gelu / gelu tanh; anything else raises
   NotImplementedError naming the attribute (use another implementation for such a model).
   Expert-parallel sentinel ids (>= num_experts, transformers' EP) get weight 0.
   ``module.pygen_backend`` (attribute on the experts module) picks a pygen backend; default:
   pygen's choice (PYGEN_BACKEND, then the per-device default).

2. Module swap. ``patch_deepseek_moe(model)`` replaces every ``DeepseekV3MoE`` in the model by
   ``pygen.nn.MoE`` (routing with moe_route too), sharing the original parameter tensors (same
   dtypes, devices, state_dict keys), and extends the model's ``_init_weights`` to the pygen
   pieces transformers does not know (:func:`init_moe_weights`), so ``from_pretrained`` into a
   patched model initialises missing expert weights. ``pygen.patch`` exposes it.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

__all__ = ["NAME", "register", "pygen_experts_forward", "patch_deepseek_moe"]

NAME = "pygen"


def _check_layout(module: nn.Module) -> str:
    """The fused_moe activation name for an experts module, or NotImplementedError."""
    from transformers.integrations import moe as hf_moe

    from ..nn.moe import ACTIVATION_NAMES

    for attr, want in (
        ("has_gate", True),
        ("has_bias", False),
        ("is_transposed", False),
        ("is_concatenated", True),
        ("has_post_expert_norm", False),
    ):
        if getattr(module, attr, want) != want:
            raise NotImplementedError(
                f"experts_implementation='pygen' supports {attr}={want} only; "
                f"{type(module).__name__} has {attr}={getattr(module, attr)!r}"
            )
    apply_gate = getattr(type(module), "_apply_gate", hf_moe._default_apply_gate)
    if apply_gate is not hf_moe._default_apply_gate:
        raise NotImplementedError(
            f"experts_implementation='pygen': {type(module).__name__} overrides "
            f"_apply_gate (a custom gating function fused_moe does not compute)"
        )
    act = getattr(getattr(module, "config", None), "hidden_act", "silu")
    if act not in ACTIVATION_NAMES:
        raise NotImplementedError(
            f"experts_implementation='pygen': hidden_act={act!r} is not one of {sorted(ACTIVATION_NAMES)}"
        )
    return ACTIVATION_NAMES[act]


def pygen_experts_forward(
    self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """ExpertsInterface entry: the experts module's forward through pygen.ops.fused_moe."""
    from ..ops.moe import fused_moe

    activation = _check_layout(self)
    w1, w2 = self.gate_up_proj, self.down_proj
    ids, weights = top_k_index, top_k_weights
    if getattr(self, "_is_expert_parallel", False):
        sentinel = ids >= self.num_experts
        ids = ids.masked_fill(sentinel, 0)
        weights = weights.masked_fill(sentinel, 0.0)
    x = hidden_states.to(w1.dtype)  # autocast may hand float32 activations to bf16 experts
    # ids come from the model's router (top-k of E, sentinels masked above): no range check,
    # which would be a host synchronisation
    out = fused_moe(
        x,
        w1,
        w2,
        weights,
        ids.int(),
        activation=activation,
        backend=getattr(self, "pygen_backend", None),
        check_ids=False,
    )
    return out.to(hidden_states.dtype)


def register() -> None:
    """Register ``"pygen"`` in transformers' ExpertsInterface (idempotent). ImportError without
    transformers 5.x."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(NAME, pygen_experts_forward)


def init_moe_weights(module: nn.Module, std: float) -> None:
    """transformers' DeepseekV3 initialisation for the pygen MoE pieces its ``_init_weights`` does
    not know (run by _patched.InitWeightsAfterSwap): routed experts Normal(0, std), the
    ``tokens_per_expert`` counter zero. The gate passes as DeepseekV3TopkRouter and the shared
    experts are nn.Linear, which transformers initialises itself."""
    from transformers import initialization as init

    from ..nn.moe import MoE, MoEExperts

    if isinstance(module, MoEExperts):
        init.normal_(module.gate_up_proj, mean=0.0, std=std)
        init.normal_(module.down_proj, mean=0.0, std=std)
    elif isinstance(module, MoE):
        init.zeros_(module.tokens_per_expert)


def patch_deepseek_moe(model: nn.Module, *, backend: str | None = None) -> dict[str, int]:
    """Replace every transformers ``DeepseekV3MoE`` inside ``model`` by ``pygen.nn.MoE`` built from
    the same config, holding the original Parameter and buffer objects (no copy; dtypes, devices
    and optimizer references kept). Module hooks move along, and the new gate still counts as a
    ``DeepseekV3TopkRouter`` for transformers' output recording (``output_router_logits=True``).
    Returns ``{"DeepseekV3MoE": count}`` (empty when none was found).
    ImportError without transformers."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    from ..nn.moe import MoE
    from ._patched import hook_init_weights, refuse_after_swap, take_hooks, typed_as
    from ._swaps import adopt_tensors, children

    counts: Counter[str] = Counter()
    for parent, child_name, child in children(model):
        if not isinstance(child, DeepseekV3MoE):
            continue
        with torch.device("meta"):  # no throw-away allocation of the expert weights
            new = MoE(child.config, backend=backend)
        adopt_tensors(new, child)
        dev = child.gate.weight.device
        new.tokens_per_expert = torch.zeros(new.n_routed_experts, dtype=torch.int64, device=dev)
        new.train(child.training)
        # MoEGate's forward, transformers' type: output_router_logits records it
        new.gate.__class__ = typed_as("DeepseekV3MoEGate")
        take_hooks(new, child)
        take_hooks(new.gate, child.gate)
        setattr(parent, child_name, new)
        counts[type(child).__name__] += 1
    if counts:
        refuse_after_swap(
            model, "set_experts_implementation", "MoE", "patch_transformers_moe", 'experts_implementation="pygen"'
        )
        hook_init_weights(model, init_moe_weights)
    return dict(counts)


try:
    register()
except ImportError:  # transformers missing or without the experts registry: nothing to hook
    pass
