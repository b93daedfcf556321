"""Where the CUDA toolkit is: the one nvcc finder used by setup.py (which loads this file by path,
before pygen or torch can be imported), ``pygen inspect`` and the tests.

Order: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda (each when it holds bin/nvcc), then $NVCC or nvcc
on PATH, accepted only when its toolkit root (with include/cuda_runtime_api.h) can be found: a
wrapper script on PATH is followed to the toolkit it runs. Standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path


def toolkit_root_of(nvcc: str) -> Path | None:
    """Toolkit root of an nvcc found on PATH (which may be a wrapper script)."""
    guess = Path(os.path.realpath(nvcc)).parent.parent
    if (guess / "include" / "cuda_runtime_api.h").exists():
        return guess
    try:  # ask nvcc where it lives: its dry run prints "#$ TOP=<root>/bin/.."
        out = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.M)
    if m:
        top = Path(m.group(1).strip()).resolve()
        if (top / "include" / "cuda_runtime_api.h").exists():
            return top
    return None


def find_cuda() -> tuple[str, Path] | None:
    """(nvcc, toolkit root), or None when there is no usable toolkit."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc"), Path(home)
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
    if nvcc:
        home = toolkit_root_of(nvcc)
        if home is not None:
            return nvcc, home
    return None


def find_nvcc() -> str | None:
    """The nvcc of ``find_cuda``, or None."""
    found = find_cuda()
    return found[0] if found else None
