"""Public functional API, one module per family: validation, backend choice and the op specs
(pygen/ops/_registry.py). Each family's ``__all__`` is its public API; this package re-exports them."""

from .flows import *
from .fp8 import *
from .losses import *
from .made import *
from .mla import *
from .moe import *
from .moe_fp8 import *
from .roi import *
