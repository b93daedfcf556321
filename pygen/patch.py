"""Swap pygen modules into third-party models in place.

    import torchvision, pygen.patch
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None)
    swapped = pygen.patch.patch_torchvision(model)   # {"MultiScaleRoIAlign": 1}

Only modules whose behaviour pygen reproduces exactly are replaced; their configuration is copied,
and since the RoI modules hold no parameters the model's state_dict is unchanged.

    pygen.patch.patch_transformers_deepseek(model)   # DeepseekV3Attention -> pygen.nn.MLA (same Parameters)
    pygen.patch.patch_transformers_moe(model)        # DeepseekV3MoE -> pygen.nn.MoE (same Parameters)
    pygen.patch.convert_to_fp8(model, filter=lambda name, m: "lm_head" not in name)   # nn.Linear -> FP8Linear

``patch(model)`` applies the exact swaps (torchvision RoI modules, transformers DeepSeek-V3
attention and MoE) whose libraries are installed; FP8 conversion changes numerics, so it is never implicit.
"""

from __future__ import annotations

from collections import Counter

from torch import nn

from . import nn as pnn
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
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
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


def patch(model: nn.Module, *, backend: str | None = None) -> dict[str, int]:
    """Apply every patcher whose library is installed; returns what was swapped."""
    swapped: dict[str, int] = {}
    for patcher in (patch_torchvision, patch_transformers_deepseek, patch_transformers_moe):
        try:
            swapped.update(patcher(model, backend=backend))
        except ImportError:
            pass
    return swapped
