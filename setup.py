"""Build script: Python packages now; the compiled modules (pygen._C, pygen._cuda) are added by the
build_ext step below (see docs/ARCHITECTURE.md, Build)."""
from setuptools import setup, find_packages

packages = find_packages(include=["pygen", "pygen.*"]) + ["pygen.kernels"]
setup(packages=packages, package_dir={"pygen.kernels": "kernels"})
