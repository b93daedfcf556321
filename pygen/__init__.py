"""pygen: hand-written Triton and CUDA C++ kernels as drop-in PyTorch ops.

    import pygen
    y = pygen.ops.roi_align(features, boxes, output_size=7, spatial_scale=0.25, sampling_ratio=2)

Backends: ``cuda`` (csrc on GPU), ``triton`` (kernels/), ``cpu`` (csrc host build, OpenMP) and
``reference`` (pure PyTorch, pygen.ref). See ``pygen info`` for what this machine has.
"""
__version__ = "0.1.0"

from . import ops, ref, nn  # noqa: E402,F401
from ._backend import BACKENDS, available_backends, backend_status  # noqa: E402,F401
