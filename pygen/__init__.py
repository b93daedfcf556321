"""pygen: hand-written Triton and CUDA C++ kernels as drop-in PyTorch ops.

    import pygen
    y = pygen.ops.roi_align(features, boxes, output_size=7, spatial_scale=0.25, sampling_ratio=2)

Backends: ``cuda`` (csrc on GPU), ``triton`` (kernels/), ``cpu`` (csrc host build, OpenMP) and
``reference`` (pure PyTorch, pygen.ref). See ``pygen info`` for what this machine has.

Value checks that read tensor values on the host (one synchronisation each on a GPU) can be
turned off for hot loops: ``pygen.set_value_checks(False)``, ``with pygen.value_checks(False):``
or ``PYGEN_VALUE_CHECKS=0`` (pygen/_value_checks.py).
"""

from . import nn, ops, ref
from ._backend import BACKENDS, available_backends, backend_status
from ._value_checks import set_value_checks, value_checks, value_checks_enabled

__version__ = "0.1.0"
