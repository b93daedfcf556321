"""Compact standard models from the seed papers, gpt-fast style (a config dataclass and plain
modules), used by ``pygen profile`` and as end-to-end tests of the drop-in modules.

    from pygen.models import build, set_backend
    model, cfg = build("faster_rcnn_roi_head", quick=True)
    out = model(*model.example_inputs(cfg))
"""

from __future__ import annotations

from .deepseek import MODELS as _DEEPSEEK_MODELS, DeepSeekV3Block, DeepSeekV3Config, DeepSeekV3LM
from .detection import (
    MODELS,
    FasterRCNNHeadConfig,
    FasterRCNNRoIHead,
    RFCNHead,
    RFCNHeadConfig,
    build,
    random_proposals,
    set_backend,
)
from .flows import MODELS as _FLOW_MODELS, Glow, GlowConfig, RealNVP2D, RealNVPImage
from .made import IAF, MADE, MAF, MODELS as _MADE_MODELS, BinaryMADE, GaussianMADE

# one registry, in the order `pygen profile` lists the models: detection, flows, MADE, DeepSeek
MODELS.update(_FLOW_MODELS)
MODELS.update(_MADE_MODELS)
MODELS.update(_DEEPSEEK_MODELS)

__all__ = [
    "MODELS",
    "build",
    "set_backend",
    "random_proposals",
    "FasterRCNNHeadConfig",
    "FasterRCNNRoIHead",
    "RFCNHead",
    "RFCNHeadConfig",
    "Glow",
    "GlowConfig",
    "RealNVP2D",
    "RealNVPImage",
    "MADE",
    "MAF",
    "IAF",
    "BinaryMADE",
    "GaussianMADE",
    "DeepSeekV3Block",
    "DeepSeekV3Config",
    "DeepSeekV3LM",
]
