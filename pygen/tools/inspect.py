"""Offline resource report for every kernel, no GPU needed (``pygen inspect``).

Triton: every entry of a kernels module's ``COMPILE_SPECS`` is compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``; registers, spill stores /
loads and stack come from running the ptxas Triton itself uses on the generated PTX with ``-v``,
shared memory is Triton's own allocation (``metadata.shared``), and ``wgmma`` says whether the
PTX contains Hopper warpgroup MMA instructions (expected for matmul-class kernels only).
Shared memory is per program: Triton's dynamic allocation plus any static smem ptxas reports.

CUDA: every ``csrc/<family>/*.cu`` is compiled with ``nvcc -arch=sm_90a -Xptxas -v -c`` (include
paths csrc/ and csrc/common) and ptxas's per-kernel report is parsed: registers, spill stores,
spill loads, stack frame and static shared memory.

Every function returns a list of row dicts with the keys of ``COLUMNS`` (None where a source
cannot say) and ``error`` set when that kernel or file failed to compile.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import _backend
from ..kernels._compile_spec import constexpr_name
from ..kernels._device import interpreting

COLUMNS = (
    "source",
    "family",
    "kernel",
    "config",
    "arch",
    "registers",
    "spill_stores",
    "spill_loads",
    "stack",
    "smem",
    "wgmma",
)
TRITON_ARCH = 90
NVCC_ARCH = "sm_90a"
NVCC_FLAGS = ("-O3", "-std=c++17", "--expt-relaxed-constexpr")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# ptxas -v parsing (shared by both sources)
# ---------------------------------------------------------------------------------------------
_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> list[dict[str, Any]]:
    """Per-entry-function resources from ``ptxas -v`` output (nvcc -Xptxas -v prints the same)."""
    kernels: dict[str, dict[str, Any]] = {}
    current = None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = m.group(1)
            kernels.setdefault(
                current,
                {
                    "kernel": current,
                    "arch": m.group(2),
                    "registers": None,
                    "spill_stores": None,
                    "spill_loads": None,
                    "stack": None,
                    "smem": 0,
                },
            )
            continue
        m = _PROPS.search(line)
        if m:
            current = m.group(1) if m.group(1) in kernels else None  # device functions: not rows
            continue
        if current is None:
            continue
        m = _FRAME.search(line)
        if m:
            kernels[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = _USED.search(line)
        if m:
            kernels[current]["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            kernels[current]["smem"] = int(s.group(1)) if s else 0
    return list(kernels.values())


def demangle(names: Iterable[str], nvcc: str | None = None) -> dict[str, str]:
    names = list(names)
    tools = []
    if nvcc:
        tools.append(str(Path(nvcc).parent / "cu++filt"))
    tools += [shutil.which("cu++filt") or "", shutil.which("c++filt") or ""]
    for tool in tools:
        if tool and os.path.exists(tool):
            try:
                out = subprocess.run(
                    [tool], input="\n".join(names), capture_output=True, text=True, timeout=30
                ).stdout.splitlines()
                if len(out) == len(names):
                    return dict(zip(names, out))
            except (OSError, subprocess.SubprocessError):
                continue
    return {n: n for n in names}


# ---------------------------------------------------------------------------------------------
# Triton
# ---------------------------------------------------------------------------------------------
def _kernel_folders() -> tuple[list[Path], str]:
    """The folders holding the kernels packages and their import prefix: every entry of
    ``pygen.kernels.__path__`` (in a checkout that package's own folder has only __init__.py and
    reaches the top-level kernels/ through __path__)."""
    pkg = importlib.import_module("pygen.kernels")
    return [Path(p) for p in pkg.__path__], "pygen.kernels"


def _kernel_names(folders: Iterable[Path]) -> list[str]:
    """The family packages (kernels/<family>/__init__.py)."""
    return sorted(
        {p.parent.name for f in folders for p in Path(f).glob("*/__init__.py") if not p.parent.name.startswith("_")}
    )


def known_families() -> list[str]:
    """Every family ``pygen inspect`` knows: a kernels/<family>/ package or a csrc/<family>/ folder
    with .cu files."""
    csrc = repo_root() / "csrc"
    cu = {f.relative_to(csrc).parts[0] for f in csrc.rglob("*.cu")} if csrc.is_dir() else set()
    return sorted(set(_kernel_names(_kernel_folders()[0])) | cu)


def _kernel_modules(families: Iterable[str] | None) -> list[tuple[str, Any]]:
    """(family, module) of every kernels module that defines COMPILE_SPECS."""
    folders, prefix = _kernel_folders()
    names = _kernel_names(folders)
    if families:
        names = [n for n in names if n in set(families)]
    mods = []
    for n in names:
        mod = importlib.import_module(f"{prefix}.{n}")
        mods.append((n, mod))
    return mods


def _spec_fields(spec) -> dict[str, Any]:
    """Normalise one COMPILE_SPECS entry: a dict (keys fn/kernel, signature, constexprs/constants,
    num_warps, num_stages, name, attrs) or a tuple (fn, signature, constexprs[, options])."""
    if isinstance(spec, dict):
        d = dict(spec)
    else:
        fn, sig, const, *rest = spec
        d = {"fn": fn, "signature": sig, "constexprs": const, **(rest[0] if rest else {})}
    d["fn"] = d.pop("fn", None) or d.pop("kernel")
    d["constexprs"] = d.pop("constexprs", None) or d.pop("constants", None) or {}
    return d


def _triton_ptxas():
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(TRITON_ARCH).path
    except Exception:
        pass
    try:
        import triton.knobs as knobs

        return knobs.nvidia.ptxas.path
    except Exception:
        return shutil.which("ptxas")


def ptxas_version(ptxas: str | None) -> str | None:
    """``12.8`` from ``ptxas --version`` (None when it cannot run)."""
    if not ptxas:
        return None
    try:
        out = subprocess.run([ptxas, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release ([\d.]+)", out) or re.search(r"cuda_([\d.]+)", out)
    return m.group(1) if m else None


def triton_toolchain() -> dict[str, Any]:
    """Which Triton (and the ptxas it bundles) compiles the Triton rows: the offline specs give
    different registers / spills / smem under different Triton releases (issue 11: CI has 3.9, the
    GPU machine 3.6), so every report names the version."""
    try:
        import triton

        version = triton.__version__
    except Exception:  # noqa: BLE001 (any failure means: no toolchain)
        return {"triton": None, "ptxas": None, "ptxas_version": None}
    ptxas = _triton_ptxas()
    return {"triton": version, "ptxas": Path(ptxas).name if ptxas else None, "ptxas_version": ptxas_version(ptxas)}


def _gpu_target():
    try:
        from triton.backends.compiler import GPUTarget
    except ImportError:  # Triton 2.x / early 3.0
        from triton.compiler.compiler import GPUTarget  # type: ignore
    return GPUTarget("cuda", TRITON_ARCH, 32)


_OPTION_KEYS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _spec_identity(d: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(kernel name, constexpr + launch-option text, launch options) of a normalised spec."""
    fn = d["fn"]
    name = d.get("name") or getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", "?")
    opts = {k: d[k] for k in _OPTION_KEYS if d.get(k) is not None}
    consts = [f"{constexpr_name(fn, k)}={v}" for k, v in dict(d["constexprs"]).items()]
    config = ", ".join(consts + [f"{k}={v}" for k, v in opts.items()])
    return name, config, opts


def spec_key(spec, family: str = "") -> tuple[str, str, str, str]:
    """(family, kernel, config, constexprs) a report row of ``spec`` carries, without compiling:
    tests match recorded reports against today's specs with it (a retuned tile makes the
    recorded row stale)."""
    d = _spec_fields(spec)
    name, config, _ = _spec_identity(d)
    return family, name, d.get("what") or config, config


def compile_triton_spec(spec, family: str = "") -> dict[str, Any]:
    """Compile one COMPILE_SPECS entry offline for sm_90 and report its resources."""
    import triton
    from triton.compiler import ASTSource

    d = _spec_fields(spec)
    fn = d["fn"]
    name, config, opts = _spec_identity(d)
    consts = dict(d["constexprs"])
    what = d.get("what")
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(
        source="triton",
        family=family,
        kernel=name,
        config=what or config,
        arch=f"sm_{TRITON_ARCH}",
        error=None,
        constexprs=config,
        tensor_cores=bool(d.get("tensor_cores")),
    )
    try:
        sig = dict(d["signature"])
        for k in consts:
            sig.setdefault(k, "constexpr")
        arg_names = getattr(fn, "arg_names", list(sig))
        sig = {a: sig[a] for a in arg_names if a in sig}
        src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=d.get("attrs"))
        k = triton.compile(src, target=_gpu_target(), options=opts)
        ptx = k.asm["ptx"]
        row["smem"] = int(getattr(k.metadata, "shared", 0) or 0)
        row["wgmma"] = "wgmma" in ptx
        row["tma"] = "cp.async.bulk.tensor" in ptx  # Hopper TMA loads (tensor descriptors)
        row["wgmma_shapes"] = sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx)))
        target = re.search(r"^\.target\s+(\w+)", ptx, re.M)
        arch = target.group(1) if target else f"sm_{TRITON_ARCH}a"
        row["arch"] = arch
        ptxas = _triton_ptxas()
        if ptxas:
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "k.ptx"
                p.write_text(ptx)
                res = subprocess.run(
                    [ptxas, f"-arch={arch}", "-v", str(p), "-o", str(Path(tmp) / "k.o")],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
            parsed = parse_ptxas(res.stdout + res.stderr)
            if parsed:
                for key in ("registers", "spill_stores", "spill_loads", "stack"):
                    row[key] = parsed[0][key]
                row["smem"] += parsed[0]["smem"] or 0  # static smem ptxas reports, if any
            elif res.returncode != 0:
                row["error"] = f"ptxas: {(res.stderr or res.stdout).strip()[:300]}"
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    return row


def triton_rows(families: Iterable[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """One row per COMPILE_SPECS entry of every kernels module (of ``families``); ``limit``
    keeps the first entries of each module only. RuntimeError when Triton cannot compile them (not
    installed, or older than pygen._backend.TRITON_MIN)."""
    unusable = _backend._triton_error()
    if unusable:
        raise RuntimeError(f"pygen inspect: {unusable}")
    fams = list(families) if families else None
    if interpreting():
        # under the interpreter @triton.jit yields InterpretedFunctions, which cannot be compiled
        return _in_child("triton_rows", fams, limit)
    rows = []
    for fam, mod in _kernel_modules(families):
        for spec in list(getattr(mod, "COMPILE_SPECS", None) or ())[:limit]:
            rows.append(compile_triton_spec(spec, fam))
    return rows


def triton_spec_keys(families: Iterable[str] | None = None) -> list[tuple[str, str, str, str]]:
    """``spec_key`` of every COMPILE_SPECS entry (of ``families``), in report order. Some kernels
    modules size their specs' tiles by TRITON_INTERPRET, so under the interpreter the keys come
    from a child process without it, as the compiled rows do (``triton_rows``)."""
    if interpreting():
        return [tuple(k) for k in _in_child("triton_spec_keys", list(families) if families else None)]
    return [
        spec_key(spec, fam)
        for fam, mod in _kernel_modules(families)
        for spec in getattr(mod, "COMPILE_SPECS", None) or ()
    ]


def _in_child(func: str, *args) -> Any:
    """``func(*args)`` of this module in a child Python without TRITON_INTERPRET (JSON in and out)."""
    import json
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        f"import json, sys; from pygen.tools.inspect import {func}; "
        f"print('@@OUT@@' + json.dumps({func}(*json.loads(sys.argv[1])), default=str))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env, timeout=1800
    )
    for line in res.stdout.splitlines():
        if line.startswith("@@OUT@@"):
            return json.loads(line[len("@@OUT@@") :])
    raise RuntimeError(f"{func} in a child process failed (rc {res.returncode}): {res.stderr.strip()[-2000:]}")


# ---------------------------------------------------------------------------------------------
# nvcc
# ---------------------------------------------------------------------------------------------
def find_nvcc() -> str | None:
    """nvcc as setup.py finds it (pygen/_cuda_toolkit.py)."""
    from .._cuda_toolkit import find_nvcc as _find

    return _find()


def nvcc_version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"release ([\d.]+)", out)
        return m.group(1) if m else out.strip().splitlines()[-1]
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"


def cu_files(families: Iterable[str] | None = None) -> list[Path]:
    csrc = repo_root() / "csrc"
    files = sorted(csrc.rglob("*.cu"))
    if families:
        fams = set(families)
        files = [f for f in files if f.relative_to(csrc).parts[0] in fams]
    return files


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pygen" / "inspect"


def _cache_key(path: Path, nvcc: str, arch: str) -> str:
    """Hash of the nvcc binary, the flags, the file and every header/source under csrc/ (so any
    edit that could change the compile invalidates the entry)."""
    import hashlib

    h = hashlib.sha256()
    st = os.stat(os.path.realpath(nvcc))
    h.update(f"{os.path.realpath(nvcc)}:{st.st_size}:{st.st_mtime_ns}:{arch}:{NVCC_FLAGS}:{path}".encode())
    for f in sorted((repo_root() / "csrc").rglob("*")):
        if f.is_file() and f.suffix in (".cu", ".cuh", ".h", ".hpp", ".cpp", ".inl"):
            h.update(str(f).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:32]


def compile_cu(path: Path, nvcc: str, arch: str = NVCC_ARCH, use_cache: bool = True) -> list[dict[str, Any]]:
    """Rows for every kernel of one .cu file (or one error row). Successful results are cached
    under ~/.cache/pygen/inspect, keyed by the sources and the toolkit."""
    import json

    key = _cache_key(path, nvcc, arch) if use_cache else None
    cached = _cache_dir() / f"{key}.json" if key else None
    if cached is not None and cached.exists():
        try:
            return json.loads(cached.read_text())
        except (OSError, ValueError):
            pass
    rows = _compile_cu(path, nvcc, arch)
    if cached is not None and rows and not any(r.get("error") for r in rows):
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(rows))
        except OSError:
            pass
    return rows


def _compile_cu(path: Path, nvcc: str, arch: str) -> list[dict[str, Any]]:
    csrc = repo_root() / "csrc"
    fam = path.relative_to(csrc).parts[0] if path.is_relative_to(csrc) else ""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            nvcc,
            f"-arch={arch}",
            "-Xptxas",
            "-v",
            "-c",
            str(path),
            "-o",
            os.path.join(tmp, "k.o"),
            "-I",
            str(csrc),
            "-I",
            str(csrc / "common"),
            *NVCC_FLAGS,
        ]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as exc:
            res = None
            err = f"{type(exc).__name__}: {exc}"
    base = {c: None for c in COLUMNS}
    base.update(source="nvcc", family=fam, config=path.name, arch=arch, error=None)
    if res is None or res.returncode != 0:
        msg = err if res is None else (res.stderr.strip().splitlines() or ["nvcc failed"])
        msg = msg if isinstance(msg, str) else next((m for m in msg if "error" in m), msg[-1])
        return [{**base, "kernel": path.name, "error": msg[:300]}]
    parsed = parse_ptxas(res.stdout + res.stderr)
    names = demangle([p["kernel"] for p in parsed], nvcc)
    return [{**base, **p, "kernel": short_name(names[p["kernel"]]), "wgmma": None} for p in parsed]


def short_name(demangled: str) -> str:
    """``void pygen::roi::(anonymous namespace)::k<pygen::bf16_t, 2>(...)`` -> ``roi::k<bf16_t, 2>``."""
    s = demangled.strip().replace("(anonymous namespace)::", "").replace("pygen::", "")
    if s.startswith("void "):
        s = s[5:]
    depth = 0
    for i, ch in enumerate(s):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            s = s[:i]
            break
    return s


def nvcc_rows(
    families: Iterable[str] | None = None, nvcc: str | None = None, jobs: int | None = None, use_cache: bool = True
) -> list[dict[str, Any]]:
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (CUDA_HOME, CUDA_PATH, /usr/local/cuda, PATH)")
    files = cu_files(families)
    with ThreadPoolExecutor(max_workers=max(1, jobs or os.cpu_count() or 1)) as ex:
        results = list(ex.map(lambda f: compile_cu(f, nvcc, use_cache=use_cache), files))
    return [r for rs in results for r in rs]


# ---------------------------------------------------------------------------------------------
# the table's columns, with the constexprs after the config, and the PTX facts and the error
JSON_KEYS = (*COLUMNS[:4], "constexprs", *COLUMNS[4:], "wgmma_shapes", "tensor_cores", "error")


def report_json(rows: list[dict[str, Any]], toolchain: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``pygen inspect --json PATH`` writes: the toolchain that compiled (Triton version and
    its ptxas) and one entry per row (docs/inspect/triton-<version>.json are such files)."""
    return {
        "toolchain": toolchain if toolchain is not None else triton_toolchain(),
        "rows": [{k: r.get(k) for k in JSON_KEYS} for r in rows],
    }


DIFF_KEYS = ("registers", "spill_stores", "spill_loads", "stack", "smem", "wgmma", "error")


def diff_reports(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of two ``report_json`` reports (same specs, two toolchains) whose registers / spills /
    stack / smem / wgmma / error differ. Rows are matched by (source, family, kernel, config) and
    their order among equal keys; each result has ``key`` and, per differing field, ``(a, b)``."""

    def keyed(rep):
        out, seen = {}, {}
        for r in rep["rows"]:
            k = (r.get("source"), r.get("family"), r.get("kernel"), r.get("config"))
            n = seen[k] = seen.get(k, -1) + 1
            out[k + (n,)] = r
        return out

    ka, kb = keyed(a), keyed(b)
    diffs = []
    for k in list(ka) + [k for k in kb if k not in ka]:
        ra, rb = ka.get(k), kb.get(k)
        if ra is None or rb is None:
            diffs.append({"key": k[:4], "missing": "a" if ra is None else "b"})
            continue
        d = {f: (ra.get(f), rb.get(f)) for f in DIFF_KEYS if ra.get(f) != rb.get(f)}
        if d:
            diffs.append({"key": k[:4], **d})
    return diffs


def summary_markdown(reports: dict[str, dict[str, Any]], edge: int = 240) -> str:
    """Markdown summary of recorded reports ({label: report_json}): per release the spec count,
    compile errors, spilling specs, the largest shared memory, and every Triton spec at ``edge``
    registers or more under some release (255 is the hardware cap: those are the specs a new
    Triton release can tip into spilling)."""
    labels = list(reports)
    out = ["| Triton | ptxas | specs | errors | spilling | wgmma | largest smem (B) |", "|---|---|---|---|---|---|---|"]
    for lab in labels:
        rep = reports[lab]
        rows = [r for r in rep["rows"] if r["source"] == "triton"]
        tc = rep.get("toolchain") or {}
        out.append(
            f"| {tc.get('triton')} | {tc.get('ptxas_version')} | {len(rows)} | "
            f"{sum(1 for r in rows if r['error'])} | "
            f"{sum(1 for r in rows if r['spill_stores'] or r['spill_loads'])} | "
            f"{sum(1 for r in rows if r['wgmma'])} | {max((r['smem'] or 0) for r in rows)} |"
        )
    keyed = {
        lab: {(r["family"], r["kernel"], r["config"]): r for r in reports[lab]["rows"] if r["source"] == "triton"}
        for lab in labels
    }
    keys = list(dict.fromkeys(k for lab in labels for k in keyed[lab]))
    near = [k for k in keys if any(((keyed[lab].get(k) or {}).get("registers") or 0) >= edge for lab in labels)]
    out += [
        "",
        f"Specs at {edge}+ registers under some release (registers / spill bytes stored):",
        "",
        "| family | kernel | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for k in near:
        cells = []
        for lab in labels:
            r = keyed[lab].get(k)
            cells.append("—" if r is None else f"{r['registers']} / {r['spill_stores'] or 0}")
        out.append(f"| {k[0]} | `{k[1]}` | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = ["source", "family", "kernel", "config", "arch", "regs", "spill st", "spill ld", "stack", "smem", "wgmma"]
    keys = COLUMNS
    if not rows:
        return "(no kernels found)"

    def cell(r, k):
        v = r.get(k)
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        s = str(v)
        return s if len(s) <= 60 else s[:57] + "..."

    body = [[cell(r, k) for k in keys] for r in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    for r, b in zip(rows, body):
        if r.get("error"):
            lines.append("  ".join(c.ljust(w) for c, w in zip(b[:5], widths[:5])) + "  ERROR: " + r["error"])
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip())
    return "\n".join(lines)
