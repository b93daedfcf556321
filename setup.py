"""Build script: the Python packages and the compiled modules (docs/ARCHITECTURE.md, Build).

* ``pygen._C``    host module: csrc/bindings_cpu.cpp + csrc/*/*_cpu.cpp, g++ -O3 -fopenmp, C++17,
                  pybind11. Always built; the install fails if it does not compile.
* ``pygen._cuda`` CUDA module: csrc/bindings_cuda.cpp (host compiler) + csrc/*/*.cu (nvcc), cudart
                  linked statically. Built when nvcc is found (CUDA_HOME / CUDA_PATH, /usr/local/cuda,
                  PATH) unless PYGEN_NO_CUDA=1. If it fails to build, a warning is printed and the
                  install goes on without it (importing pygen works with either module missing).

Both are compiled through ninja (one build.ninja in the build-temp folder, sources in parallel,
header dependencies tracked), not through torch.utils.cpp_extension: torch's builder refuses .cu
sources on a CPU-only torch, and the kernels need no torch headers, so one build serves any torch.

Environment:
  PYGEN_CUDA_ARCHS  target list, e.g. "80;90a" (the default) or "80;90a;100a"; "+PTX" on an entry
                    also embeds that entry's PTX. By default compute_80 PTX is embedded so newer
                    GPUs can JIT the kernels.
  PYGEN_NO_CUDA=1   skip the CUDA module.
  CXX               host compiler (default g++), NVCC / CUDA_HOME  the CUDA toolkit.
  MAX_JOBS          ninja parallelism (default: ninja's own, cores + 2).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"

packages = find_packages(include=["pygen", "pygen.*"]) + ["pygen.bench"]
package_dir = {"pygen.bench": "bench"}


class BuildPyWithKernels(build_py):
    """Copies the top-level kernels/ (kernels/_device.py and one package per family) into
    pygen/kernels/ of a wheel. The folder itself has no __init__.py (so it never shadows the PyPI
    package ``kernels``); pygen/kernels/__init__.py is the package, and in a source checkout or
    editable install it reaches kernels/ through __path__."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dst = Path(self.build_lib) / "pygen" / "kernels"
        for src in sorted((ROOT / "kernels").rglob("*.py")):
            out = dst / src.relative_to(ROOT / "kernels")
            out.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(src), str(out))


def _rel(paths):
    return sorted(str(p.relative_to(ROOT)) for p in paths)


CPU_SOURCES = _rel([CSRC / "bindings_cpu.cpp", *CSRC.glob("*/*_cpu.cpp")])
CUDA_SOURCES = _rel([CSRC / "bindings_cuda.cpp", *CSRC.glob("*/*.cu")])


def _warn(msg: str) -> None:
    print(f"\n*** pygen build warning: {msg}\n", file=sys.stderr, flush=True)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _find_ninja() -> str | None:
    try:
        import ninja  # the PyPI wheel ships the binary

        exe = Path(ninja.BIN_DIR) / "ninja"
        if exe.exists():
            return str(exe)
    except Exception:
        pass
    return shutil.which("ninja")


def _toolkit_finder():
    """pygen/_cuda_toolkit.py, loaded by path: the one nvcc finder (pygen itself needs torch)."""
    import importlib.util

    path = Path(__file__).resolve().parent / "pygen" / "_cuda_toolkit.py"
    spec = importlib.util.spec_from_file_location("_pygen_cuda_toolkit", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _find_cuda() -> tuple[str, Path] | None:
    """(nvcc, toolkit root) or None."""
    return _toolkit_finder().find_cuda()


def _cuda_lib_dir(home: Path) -> Path | None:
    for d in (
        home / "lib64",
        home / "lib",
        home / "targets" / "x86_64-linux" / "lib",
        home / "targets" / "sbsa-linux" / "lib",
    ):
        if (d / "libcudart_static.a").exists():
            return d
    return None


def _gencode_flags() -> list[str]:
    spec = os.environ.get("PYGEN_CUDA_ARCHS", "").strip()
    default = not spec
    entries = [e for e in re.split(r"[;,\s]+", spec or "80;90a") if e]
    flags = []
    for i, e in enumerate(entries):
        ptx = e.endswith("+PTX") or (default and i == 0)
        arch = e.removesuffix("+PTX").replace(".", "").replace("sm_", "").replace("compute_", "")
        if not re.fullmatch(r"\d{2,3}[af]?", arch):
            raise ValueError(f"PYGEN_CUDA_ARCHS: cannot parse {e!r} (use e.g. '80;90a;100a')")
        code = f"[sm_{arch},compute_{arch}]" if ptx else f"sm_{arch}"
        flags.append(f"-gencode=arch=compute_{arch},code={code}")
    return flags


def _q(s) -> str:
    """Quote for a ninja command line (ninja hands the command to /bin/sh)."""
    s = str(s)
    return s if re.fullmatch(r"[\w@%+=:,./-]+", s) else "'" + s.replace("'", "'\\''") + "'"


def _esc(path) -> str:
    """Escape a path in a ninja build statement."""
    return str(path).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def _cuda_toolchain() -> tuple[str, Path, Path] | None:
    """(nvcc, toolkit root, the folder of libcudart_static.a), or None when pygen._cuda is skipped
    (PYGEN_NO_CUDA, no toolkit, no static cudart)."""
    if _truthy("PYGEN_NO_CUDA"):
        print("pygen: PYGEN_NO_CUDA set, skipping pygen._cuda")
        return None
    cuda = _find_cuda()
    if cuda is None:
        print("pygen: nvcc not found (CUDA_HOME, /usr/local/cuda, PATH); skipping pygen._cuda")
        return None
    libdir = _cuda_lib_dir(cuda[1])
    if libdir is None:
        _warn(f"libcudart_static.a not found under {cuda[1]}; skipping pygen._cuda")
        return None
    return cuda[0], cuda[1], libdir


def _ninja_rules(cxx: str) -> list[str]:
    return [
        "ninja_required_version = 1.3",
        "rule cxx",
        "  command = $cxx -MMD -MF $out.d $flags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX $in",
        "rule nvcc",
        "  command = $nvcc -MD -MF $out.d $flags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = NVCC $in",
        "rule link",
        "  command = $cxx -shared $in $flags -o $out",
        "  description = LINK $out",
        f"cxx = {_q(cxx)}",
    ]


def _extension_sources(name: str, common: list[str], cuda, cxx: str, lines: list[str]):
    """([(source, ninja rule, flags)], link flags) of the extension ``name``, or None to skip it
    (no CUDA toolchain, or a bad PYGEN_CUDA_ARCHS). Adds the nvcc variable to ``lines``."""
    if name == "_C":
        return [(s, "cxx", common + ["-fopenmp"]) for s in CPU_SOURCES], ["-fopenmp"]
    if name != "_cuda":
        raise RuntimeError(f"unknown extension {name}")
    if cuda is None:
        return None
    nvcc, home, libdir = cuda
    try:
        gencode = _gencode_flags()
    except ValueError as exc:
        _warn(f"{exc}; skipping pygen._cuda")
        return None
    lines.append(f"nvcc = {_q(nvcc)}")
    host = common + [f"-I{home / 'include'}"]
    dev = [
        "-O3",
        "-std=c++17",
        f"-I{CSRC}",
        "-Xcompiler=-fPIC,-fvisibility=hidden",
        "--expt-relaxed-constexpr",
        f"-ccbin={cxx}",
    ] + gencode
    srcs = [(s, "nvcc" if s.endswith(".cu") else "cxx", dev if s.endswith(".cu") else host) for s in CUDA_SOURCES]
    # cudart is linked statically and its symbols kept local, so this module's runtime never binds
    # to (or interposes on) the libcudart.so that torch loads.
    ldflags = [
        f"-L{libdir}",
        "-lcudart_static",
        "-ldl",
        "-lrt",
        "-lpthread",
        "-Wl,--exclude-libs,ALL",
        "-Wl,-Bsymbolic",
    ]
    return srcs, ldflags


def _run_ninja(ninja: str, build_dir: Path, targets: dict) -> set[str]:
    """Builds every target (-k 0: as much as it can); returns the targets that failed."""
    cmd = [ninja, "-C", str(build_dir), "-k", "0"]
    if os.environ.get("MAX_JOBS"):
        cmd += ["-j", os.environ["MAX_JOBS"]]
    print("pygen: " + " ".join(cmd + list(targets)), flush=True)
    rc = subprocess.run(cmd + list(targets), check=False).returncode
    failed = set()
    if rc != 0:  # ask ninja which targets are still out of date
        for name in targets:
            dry = subprocess.run([ninja, "-C", str(build_dir), "-n", name], capture_output=True, text=True, check=False)
            if "no work to do" not in dry.stdout:
                failed.add(name)
        failed = failed or set(targets)
    return failed


class NinjaBuildExt(build_ext):
    """Builds every extension with one generated build.ninja (parallel, incremental)."""

    def build_extensions(self):
        ninja = _find_ninja()
        if ninja is None:
            raise RuntimeError("pygen: ninja not found (pip install ninja)")
        import pybind11

        build_dir = Path(self.build_temp).resolve() / "pygen-ninja"
        build_dir.mkdir(parents=True, exist_ok=True)
        cxx = os.environ.get("CXX", "g++")
        common = [
            "-O3",
            "-std=c++17",
            "-fPIC",
            "-fvisibility=hidden",
            "-Wall",
            "-Wno-unknown-pragmas",
            f"-I{CSRC}",
            f"-I{sysconfig.get_paths()['include']}",
            f"-I{pybind11.get_include()}",
        ]
        cuda = _cuda_toolchain()
        lines = _ninja_rules(cxx)
        targets = {}
        for ext in self.extensions:
            name = ext.name.split(".")[-1]
            out = Path(self.get_ext_fullpath(ext.name)).resolve()
            out.parent.mkdir(parents=True, exist_ok=True)
            plan = _extension_sources(name, common, cuda, cxx, lines)
            if plan is None:
                continue
            srcs, ldflags = plan
            objs = []
            for src, rule, flags in srcs:
                obj = build_dir / name / (src.replace("/", "__") + ".o")
                objs.append(obj)
                lines += [
                    f"build {_esc(obj)}: {rule} {_esc(ROOT / src)}",
                    "  flags = " + " ".join(_q(f) for f in flags),
                ]
            lines += [
                f"build {_esc(out)}: link " + " ".join(_esc(o) for o in objs),
                "  flags = " + " ".join(_q(f) for f in ldflags),
                f"build {name}: phony {_esc(out)}",
            ]
            targets[name] = (ext, out)
        (build_dir / "build.ninja").write_text("\n".join(lines) + "\n")
        failed = _run_ninja(ninja, build_dir, targets)
        if "_C" in failed:
            raise RuntimeError("pygen: building the host module pygen._C failed (compiler output above)")
        skipped = [e for e in self.extensions if e.name.split(".")[-1] not in targets]
        for name in failed:
            _warn(
                f"building pygen.{name} failed (compiler output above); installing without it. "
                "Set PYGEN_NO_CUDA=1 to skip it on purpose."
            )
        for ext in [targets[n][0] for n in failed] + skipped:
            self._drop(ext)

    def _drop(self, ext):
        """Leave an extension out of this install, including a stale copy from an earlier build."""
        stale = [Path(self.get_ext_fullpath(ext.name))]
        if self.inplace or getattr(self, "editable_mode", False):
            build_py = self.get_finalized_command("build_py")
            stale.append(Path(self._get_inplace_equivalent(build_py, ext)[0]))
        for f in stale:
            if f.exists():
                f.unlink()
        self.extensions.remove(ext)


ext_modules = [
    Extension("pygen._C", sources=CPU_SOURCES),
    Extension("pygen._cuda", sources=CUDA_SOURCES, optional=True),
]

setup(
    packages=packages,
    package_dir=package_dir,
    ext_modules=ext_modules,
    cmdclass={"build_ext": NinjaBuildExt, "build_py": BuildPyWithKernels},
)
