"""Launcher helper shared by the flow kernels."""
from __future__ import annotations

import functools

import torch


def device_guard(launcher):
    """Run a launcher with its first tensor's CUDA device current: Triton launches on the current
    device, which need not be the tensors' one on a multi-GPU machine."""
    @functools.wraps(launcher)
    def run(first, *args, **kwargs):
        if first.is_cuda:
            with torch.cuda.device(first.device):
                return launcher(first, *args, **kwargs)
        return launcher(first, *args, **kwargs)
    return run
