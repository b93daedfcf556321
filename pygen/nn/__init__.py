"""Drop-in nn.Modules: same constructor arguments and state_dict keys as the modules they replace;
only forward differs."""

from ._mla_cache import PagedMLACache
from .flows import ActNorm, AdditiveCoupling, AffineCoupling, InvConv1x1, Squeeze
from .fp8 import FP8Linear, convert_to_fp8
from .losses import GRPOLoss, InfoNCELoss, LinearCrossEntropyLoss
from .made import MaskedLinear
from .mla import MLA
from .moe import MoE, MoEExperts, MoEGate, MoEMLP
from .roi import MultiScaleRoIAlign, PSRoIAlign, PSRoIPool, RoIAlign, RoIPool
