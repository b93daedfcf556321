"""Pure-PyTorch references, one module per op family: the test oracle (run in float64), the
``reference`` backend, and readable documentation of each op's math."""
from . import roi  # noqa: F401
from . import flows  # noqa: F401
from . import made  # noqa: F401
from . import fp8  # noqa: F401
from . import mla  # noqa: F401
from . import moe  # noqa: F401
