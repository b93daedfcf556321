"""Drop-in nn.Modules: same constructor arguments and state_dict keys as the modules they replace;
only forward differs."""
from .roi import MultiScaleRoIAlign, PSRoIAlign, PSRoIPool, RoIAlign, RoIPool  # noqa: F401
from .flows import ActNorm, AdditiveCoupling, AffineCoupling, InvConv1x1, Squeeze  # noqa: F401
from .made import MaskedLinear  # noqa: F401
from .mla import MLA  # noqa: F401
from ._mla_cache import PagedMLACache  # noqa: F401
from .fp8 import FP8Linear, convert_to_fp8  # noqa: F401
from .moe import MoE, MoEExperts, MoEGate, MoEMLP  # noqa: F401
