"""``pygen.kernels``: the Triton kernels (@triton.jit functions and their launchers).

Their sources live in the repository's top-level ``kernels/`` folder, which on purpose has no
``__init__.py``: a regular package named ``kernels`` at the repository root would shadow the PyPI
distribution ``kernels`` (which transformers imports) whenever the root is on ``sys.path`` —
``python -m pytest``, ``python -c ...`` in a clone. As a folder without ``__init__.py`` it is at most
a namespace portion, and any installed regular package of that name wins over it.

Each family is a package, ``kernels/<family>/`` (its ``__init__.py`` holds the launchers, the other
files the kernels by what they compute); ``kernels/_device.py`` is the shared device guard. A wheel
copies ``kernels/**/*.py`` next to this file (setup.py's ``build_py``). A source checkout (an
editable install, or ``pygen`` imported from the repository root) finds them through ``__path__``,
extended below with the checkout's ``kernels/`` folder.
"""

import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_os.path.dirname(_here))
# The sibling-folder test guards a wheel install, where ``_root/kernels`` is site-packages/kernels
# (possibly the PyPI package): only a checkout has setup.py beside it, and only a checkout lacks
# the copied kernel modules here.
if (
    not _os.path.isfile(_os.path.join(_here, "roi", "__init__.py"))
    and _os.path.isfile(_os.path.join(_root, "setup.py"))
    and _os.path.isdir(_os.path.join(_root, "kernels"))
):
    __path__.append(_os.path.join(_root, "kernels"))  # noqa: F821 (a package's __path__ is defined)
