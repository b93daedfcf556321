"""Swap pygen modules into third-party models in place.

    import torchvision, pygen.patch
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    swapped = pygen.patch.patch_torchvision(model)   # {"MultiScaleRoIAlign": 1}

Only modules whose behaviour pygen reproduces exactly are replaced; their configuration is copied,
and since the RoI modules hold no parameters the model's state_dict is unchanged.

    pygen.patch.patch_transformers_deepseek(model)   # DeepseekV3Attention -> pygen.nn.MLA (same Parameters)
    pygen.patch.patch_transformers_moe(model)        # DeepseekV3MoE -> pygen.nn.MoE (same Parameters)
    pygen.patch.convert_to_fp8(model, filter=lambda name, m: "lm_head" not in name)   # nn.Linear -> FP8Linear
    pygen.patch.patch_nflows(flow)   # nflows MaskedLinear / MADE -> pygen's (same Parameters and buffers)
    pygen.patch.patch_zuko(flow)     # zuko MaskedLinear / MaskedMLP -> pygen's (same Parameters and buffers)
    pygen.patch.patch_transformers_loss(lm)   # *ForCausalLM loss via linear_cross_entropy (no logits)

``patch(model)`` applies the exact swaps (torchvision RoI modules, transformers DeepSeek-V3
attention and MoE, nflows and zuko masked layers) whose libraries are installed; FP8 conversion
changes numerics, so it is never implicit; nor is ``patch_transformers_loss``, which changes what the
model returns (``logits`` None in a call with labels).

A transformers model patched in its constructor loads with ``from_pretrained`` like the stock one,
missing weights initialised as transformers would (docs/moe_layer.md)::

    class PatchedDeepseek(DeepseekV3ForCausalLM):
        def __init__(self, config):
            super().__init__(config)
            pygen.patch.patch(self)

    model = PatchedDeepseek.from_pretrained(path)
"""

from __future__ import annotations

from collections import Counter

from torch import nn

from . import nn as pnn
from .integrations._swaps import children
from .nn.fp8 import convert_to_fp8  # noqa: F401  (nn.Linear -> FP8Linear, with a filter)


def _roi_replacements(backend):
    """(torchvision class name, factory from the old module) pairs."""
    return {
        "RoIAlign": lambda m: pnn.RoIAlign(
            m.output_size, m.spatial_scale, m.sampling_ratio, m.aligned, backend=backend
        ),
        "RoIPool": lambda m: pnn.RoIPool(m.output_size, m.spatial_scale, backend=backend),
        "PSRoIAlign": lambda m: pnn.PSRoIAlign(m.output_size, m.spatial_scale, m.sampling_ratio, backend=backend),
        "PSRoIPool": lambda m: pnn.PSRoIPool(m.output_size, m.spatial_scale, backend=backend),
        "MultiScaleRoIAlign": lambda m: pnn.MultiScaleRoIAlign(
            list(m.featmap_names),
            m.output_size,
            m.sampling_ratio,
            canonical_scale=getattr(m, "canonical_scale", 224),
            canonical_level=getattr(m, "canonical_level", 4),
            backend=backend,
        ),
    }


def patch_torchvision(model: nn.Module, *, backend: str | None = None) -> dict[str, int]:
    """Replace torchvision.ops RoI modules inside ``model`` with pygen's; returns counts by class.

    Raises ImportError when torchvision is not installed.
    """
    import torchvision.ops as tvo

    factories = {getattr(tvo, name): make for name, make in _roi_replacements(backend).items()}
    counts: Counter[str] = Counter()
    for parent, child_name, child in children(model):
        make = factories.get(type(child))
        if make is not None:
            setattr(parent, child_name, make(child))
            counts[type(child).__name__] += 1
    return dict(counts)


def patch_transformers_deepseek(model: nn.Module, *, backend: str | None = None) -> dict[str, int]:
    """Swap pygen.nn.MLA into a transformers DeepseekV3 model in place (the original Parameter
    objects are kept); returns counts by class. Raises ImportError without transformers."""
    from .integrations.transformers_mla import patch_deepseek_attention

    return patch_deepseek_attention(model, backend=backend)


def patch_transformers_moe(model: nn.Module, *, backend: str | None = None) -> dict[str, int]:
    """Swap pygen.nn.MoE into a transformers DeepseekV3 model in place (DeepseekV3MoE layers; the
    original Parameter objects are kept); returns counts by class. Raises ImportError without
    transformers. (``experts_implementation="pygen"`` is the no-swap alternative: importing
    pygen.integrations.transformers_moe registers it.)"""
    from .integrations.transformers_moe import patch_deepseek_moe

    return patch_deepseek_moe(model, backend=backend)


def patch_nflows(model: nn.Module, *, backend: str | None = None) -> dict[str, int]:
    """Swap pygen.nn.MaskedLinear and pygen.models.made.MADE into an nflows model in place (the
    original Parameter and buffer objects are kept); returns counts by class. Modules pygen would
    compute differently (nflows 0.14's softplus MAF scale, a MADE with context) are kept with a
    warning; pygen/integrations/nflows.py and docs/made.md list them. ImportError without nflows."""
    from .integrations.nflows import patch_nflows_made

    return patch_nflows_made(model, backend=backend)


def patch_zuko(model: nn.Module, *, backend: str | None = None) -> dict[str, int]:
    """Swap pygen.nn.MaskedLinear into a zuko model in place, and fuse the activations of its
    MaskedMLPs into the masked layers' kernels (the original Parameter and buffer objects are kept);
    returns counts by class. zuko's MAF transform is kept with a warning (pygen/integrations/zuko.py,
    docs/made.md). ImportError without zuko."""
    from .integrations.zuko import patch_zuko_masked

    return patch_zuko_masked(model, backend=backend)


def patch_transformers_loss(
    model: nn.Module, *, return_logits: bool = False, backend: str | None = None
) -> dict[str, int]:
    """Make a transformers ``*ForCausalLM`` (DeepseekV3, Qwen3, Llama, ...) compute its training loss
    with pygen.ops.linear_cross_entropy when ``labels`` are given: the stock loss and gradients
    (label shift, ignore_index, num_items_in_batch, logits_to_keep, final_logit_softcapping, MoE aux
    loss) without the [N, V] logits, so ``logits`` is None in those outputs unless
    ``return_logits=True`` (here, as the model's default, or per call). Without labels the model is
    unchanged. Idempotent; returns ``{class name: 1}`` (``{}`` when already patched). Not part of
    :func:`patch`, since it changes what the model returns. ImportError without transformers,
    TypeError for another model (pygen/integrations/transformers_loss.py, docs/losses_dropins.md)."""
    from .integrations.transformers_loss import patch_causal_lm_loss

    return patch_causal_lm_loss(model, return_logits=return_logits, backend=backend)


def patch(model: nn.Module, *, backend: str | None = None) -> dict[str, int]:
    """Apply every patcher whose library is installed; returns what was swapped (counts by class,
    summed over the patchers)."""
    swapped: Counter[str] = Counter()
    for patcher in (patch_torchvision, patch_transformers_deepseek, patch_transformers_moe, patch_nflows, patch_zuko):
        try:
            swapped.update(patcher(model, backend=backend))
        except ImportError:
            pass
    return dict(swapped)
