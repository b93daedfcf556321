"""Pure-PyTorch references, one module per op family: the test oracle (run in float64), the
``reference`` backend, and readable documentation of each op's math."""

from . import flows, fp8, losses, made, mla, moe, roi
