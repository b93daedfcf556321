"""Public functional API, one module per family: validation, backend choice, torch.library
registration and autograd."""
from .roi import multi_scale_roi_align, ps_roi_align, ps_roi_pool, roi_align, roi_pool  # noqa: F401
