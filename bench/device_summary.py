"""The closing table of bench/device_run.sh: per family, its kernels, pass/fail of every check and
the headline speed ratio against the family's main baseline.

    python bench/device_summary.py STAGE [--out FILE]

STAGE is the folder device_run.sh fills (and what $OUT/device_run.tar.gz unpacks to):

    logs/steps.tsv                 one line per step: name, exit status, seconds, limit, note
    logs/tests.log                 pytest -v of the GPU tests (junit-tests.xml beside it)
    logs/graphs.log                tests/common/test_cuda_graphs.py + tests/common/test_multi_gpu.py (junit-graphs.xml)
    logs/memcheck.log              compute-sanitizer --tool memcheck over pytest -v -s of a subset
    logs/racecheck.log             compute-sanitizer --tool racecheck, the CUDA C++ (csrc) subset
    logs/bench-<family>.log        pygen bench output (MISMATCH / error notes of pygen backends)
    results/bench.jsonl            the bench JSON lines (or results/<device>/<family>.jsonl after the split)

A pytest step's junit XML is used when it was written (the run finished); else its -v log is
parsed, and a test that started but never reported (the step's time limit) counts as unfinished.

The ratio: for each benchmark case (op, shape, dtype, mode) the fastest pygen backend timed
against the baseline, ``baseline median / pygen median`` (the paired ratio of the harness, its
``vs`` field, where it has one); a kernel's ratio is the median over its cases, the family's
headline the median over all its cases against the family's main baseline (the first of
BASELINES[family] that was timed). Standard library only: this runs after every step, and
anywhere the archive is unpacked.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

# Public ops per family, written out because this script cannot import pygen (standard library only;
# tests/common/test_device_run.py checks the list against pygen.ops). Ops with no kernel
# (planar, radial: reference only; sort_hidden_units: a parameter helper) get no row.
FAMILIES = {
    family: tuple(names.split())
    for family, names in {
        "roi": "roi_align roi_pool ps_roi_align ps_roi_pool multi_scale_roi_align",
        "made": "masked_linear masked_linear_plain masked_linear_bits made_affine_forward made_sample pack_bits "
        "sort_hidden_units",
        "flows": "slogdet affine_coupling additive_coupling actnorm actnorm_init inv_conv1x1 inv_conv1x1_lu "
        "sylvester planar radial",
        "mla": "mla_decode mla_cache_append mla_prefill merge_attn_states",
        "moe": "moe_route moe_align moe_permute moe_unpermute fused_moe fused_moe_fp8 quantize_moe_weights_fp8",
        "fp8": "quantize_fp8_1x128 quantize_fp8_128x128 dequantize_fp8 fp8_gemm fp8_gemm_grouped fp8_gemm_wgrad",
        "losses": "linear_cross_entropy linear_log_probs info_nce grpo_loss linear_grpo_loss group_advantages",
    }.items()
}
NO_KERNEL = {"planar", "radial", "sort_hidden_units", "group_advantages"}

# The baseline a family is measured against, in order of preference (the library a user would
# otherwise call first, then torch.compile of the reference, then the eager reference).
BASELINES = {
    "roi": ("torchvision", "compile(reference)", "reference"),
    "made": ("dense masked", "D passes (dense masked)", "step loop", "compile(reference)", "reference"),
    "flows": ("compile(reference)", "reference"),
    "mla": ("flashmla", "vllm-triton", "sglang-triton", "compile(reference)", "reference"),
    "moe": ("vllm:fused_experts", "transformers:grouped_mm", "transformers:eager", "compile(reference)", "reference"),
    "fp8": ("torch._scaled_mm", "compile(reference)", "reference", "torch.matmul"),
    "losses": ("eager", "compile(reference)", "reference"),
}

# test-name keywords -> family, for tests outside a family's own files (first match wins)
KEYWORDS = (
    ("roi", "roi"),
    ("moe", "moe"),
    ("mla", "mla"),
    ("fp8", "fp8"),
    ("made", "made"),
    ("masked_linear", "made"),
    ("slogdet", "flows"),
    ("coupling", "flows"),
    ("actnorm", "flows"),
    ("conv1x1", "flows"),
    ("sylvester", "flows"),
    ("flow", "flows"),
    ("cross_entropy", "losses"),
    ("log_probs", "losses"),
    ("info_nce", "losses"),
    ("grpo", "losses"),
    ("decode", "mla"),
    ("prefill", "mla"),
    ("gemm", "fp8"),
    ("quantize", "fp8"),
)
GRAPH_FILES = ("test_cuda_graphs", "test_multi_gpu")
CUT_RC = ("124", "137", "143", "130")  # timeout's limit, its KILL, SIGTERM / SIGINT of the script
OUTCOMES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")

_ALL_OPS = sorted((op for ops in FAMILIES.values() for op in ops), key=len, reverse=True)
_OP_FAMILY = {op: fam for fam, ops in FAMILIES.items() for op in ops}


# ---- which family / kernel a test belongs to ------------------------------------------------------
def _split(nodeid: str) -> tuple[str, str, str]:
    """(file stem, test function, parameter id) of ``tests/test_x.py::test_f[p]`` (or a junit
    ``tests.test_x::test_f[p]``)."""
    path, _, rest = nodeid.partition("::")
    parts = re.split(r"[/.]", path.removesuffix(".py"))
    stem = next((p for p in reversed(parts) if p.startswith("test_")), parts[-1])
    func, _, param = rest.partition("[")
    return stem, func.split("::")[-1], param.rstrip("]")


def family_of_test(nodeid: str) -> str:
    stem, func, param = _split(nodeid)
    if stem in GRAPH_FILES and param.split("-")[0] in FAMILIES:
        return param.split("-")[0]
    m = re.match(r"test_(roi|made|flows|mla|moe|fp8|losses)", stem)
    if m:
        return m.group(1)
    text = f"{func}[{param}]".lower()
    for word, fam in KEYWORDS:
        if word in text:
            return fam
    return "other"


def kernel_of_test(nodeid: str) -> str | None:
    """The op a test is about, when its name says so (graph tests: the case's op)."""
    stem, func, param = _split(nodeid)
    if stem in GRAPH_FILES and param.count("-") >= 2:
        return param.split("-")[1].split(".")[0]
    text = f"{func}[{param}]"
    for op in _ALL_OPS:
        if op in text:
            return op
    return None


# ---- pytest outcomes -------------------------------------------------------------------------------
def parse_junit(path: Path) -> dict[str, str] | None:
    """nodeid -> outcome (PASSED, FAILED, ERROR, SKIPPED) from a junit XML, None if unreadable."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    out = {}
    for tc in root.iter("testcase"):
        nodeid = f"{tc.get('classname', '')}::{tc.get('name', '')}"
        tags = {child.tag for child in tc}
        out[nodeid] = (
            "FAILED"
            if "failure" in tags
            else "ERROR"
            if "error" in tags
            else "SKIPPED"
            if "skipped" in tags
            else "PASSED"
        )
    return out


_RE_VERBOSE = re.compile(r"^(?P<id>[\w./-]+\.py::\S.*?) (?P<st>" + "|".join(OUTCOMES) + r")\b")
_RE_XDIST = re.compile(r"^\[gw\d+\] \[\s*\d+%\] (?P<st>" + "|".join(OUTCOMES) + r") (?P<id>[\w./-]+\.py::.*?)\s*$")
_RE_SUMMARY = re.compile(r"^(?P<st>" + "|".join(OUTCOMES) + r") (?P<id>[\w./-]+\.py::.*?)(?: - .*)?$")
_RE_START = re.compile(r"^(?P<id>[\w./-]+\.py::\S.*?\])(?: |$)|^(?P<id2>[\w./-]+\.py::[\w]+)(?: |$)")
_RE_BARE = re.compile(r"(?:^|\s)(?P<st>" + "|".join(OUTCOMES) + r")(?:\s|$)")


def parse_pytest_log(text: str) -> tuple[dict[str, str], str | None]:
    """(nodeid -> outcome, the test that started last and never reported) from pytest -v output,
    with or without -s (whose test output lands between the node id and its outcome) and xdist."""
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        line = line.rstrip()
        m = _RE_XDIST.match(line) or _RE_SUMMARY.match(line)
        if m:
            out[m.group("id")] = m.group("st")
            continue
        m = _RE_VERBOSE.match(line)
        if m:
            out[m.group("id")] = m.group("st")
            current = None
            continue
        m = _RE_START.match(line)
        if m:
            current = m.group("id") or m.group("id2")
            tail = line[m.end() :]
            b = _RE_BARE.search(tail)
            if b:
                out[current] = b.group("st")
                current = None
            continue
        if current:
            b = _RE_BARE.search(line)
            if b and not line.startswith("========="):
                out[current] = b.group("st")
                current = None
    unfinished = current if current and current not in out else None
    return out, unfinished


def pytest_outcomes(stage: Path, name: str) -> tuple[dict[str, str], str | None, bool]:
    """(outcomes, unfinished test, ran) of the pytest step ``name``."""
    log = stage / "logs" / f"{name}.log"
    junit = parse_junit(stage / "logs" / f"junit-{name}.xml")
    text = log.read_text(errors="replace") if log.exists() else ""
    from_log, unfinished = parse_pytest_log(text)
    if junit:
        return junit, None, True
    return from_log, unfinished, log.exists()


# ---- compute-sanitizer ----------------------------------------------------------------------------
_RE_SAN = re.compile(r"(?<!=)========= (?P<msg>\S.*)$")  # not pytest's "==== title ====" banners
_SAN_NOT_ERRORS = (
    "COMPUTE-SANITIZER",
    "ERROR SUMMARY",
    "RACECHECK SUMMARY",
    "LEAK SUMMARY",
    "Target application returned an error",
    "This can happen",
    "Warning:",
)


def parse_sanitizer_log(text: str) -> dict:
    """Error headlines attributed to the test running when they were printed (pytest -v -s), the
    final ERROR SUMMARY count, and whether compute-sanitizer was there at all."""
    errors: dict[str, list[str]] = defaultdict(list)
    warnings = 0
    total = None
    current = "(outside any test)"
    for line in text.splitlines():
        m = _RE_START.match(line) or _RE_VERBOSE.match(line)
        if m:
            current = m.group("id") or (m.groupdict().get("id2") or current)
        s = _RE_SAN.search(line)
        if not s:
            continue
        msg = s.group("msg")
        t = re.match(r"ERROR SUMMARY: (\d+) error", msg)
        if t:
            total = int(t.group(1))
            continue
        if msg.startswith("Warning:"):
            warnings += 1
        elif not msg.startswith(_SAN_NOT_ERRORS):
            errors[current].append(msg)
    missing = "compute-sanitizer not found" in text or "SANITIZER UNAVAILABLE" in text
    return {"errors": dict(errors), "total": total, "warnings": warnings, "missing": missing}


# ---- steps and bench ------------------------------------------------------------------------------
def read_steps(stage: Path) -> dict[str, dict]:
    steps = {}
    path = stage / "logs" / "steps.tsv"
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[0]:
                steps[parts[0]] = {
                    "rc": parts[1],
                    "seconds": parts[2],
                    "limit": parts[3] if len(parts) > 3 else "",
                    "note": parts[4] if len(parts) > 4 else "",
                }
    return steps


def read_records(stage: Path) -> list[dict]:
    res = stage / "results"
    files = [res / "bench.jsonl"] if (res / "bench.jsonl").exists() else sorted(res.glob("*/*.jsonl"))
    recs = []
    for f in files:
        for line in f.read_text(errors="replace").splitlines():
            if line.strip():
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut short by a kill
    return recs


_RE_MISMATCH = re.compile(r"^note: MISMATCH (?P<op>\S+) (?P<mode>\S+) (?P<dtype>\S+) (?P<backend>pygen:\S+):")
_RE_ERROR = re.compile(r"^note: (?P<op>\S+) (?P<mode>fwd\+bwd|fwd|bwd) (?P<dtype>\S+) (?P<backend>pygen:\S+): ")


def bench_failures(stage: Path) -> dict[str, list[str]]:
    """family -> ["op mode dtype backend: MISMATCH|error", ...] from the bench logs."""
    out: dict[str, list[str]] = defaultdict(list)
    for log in sorted((stage / "logs").glob("bench-*.log")):
        fam = log.stem.removeprefix("bench-")
        for line in log.read_text(errors="replace").splitlines():
            m = _RE_MISMATCH.match(line)
            kind = "MISMATCH"
            if not m:
                m, kind = _RE_ERROR.match(line), "error"
            if m:
                out[fam].append(f"{m['op']} {m['mode']} {m['dtype']} {m['backend']}: {kind}")
    return dict(out)


def _ratio(pg: dict, base: dict) -> float | None:
    stats = (pg.get("vs") or {}).get(base["backend"]) or {}
    r = stats.get("ratio")
    if isinstance(r, (int, float)) and r > 0:
        return float(r)
    if pg.get("median_ms") and base.get("median_ms"):
        return base["median_ms"] / pg["median_ms"]
    return None


def case_ratios(records: list[dict]) -> dict[str, list[dict]]:
    """family -> one entry per case with a timed pygen backend: {"op", "best", "ratios": {baseline: ratio}}."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("status") == "ok" and r.get("median_ms"):
            groups[(r.get("family", "?"), r.get("op"), r.get("shape_label"), r.get("dtype"), r.get("mode"))].append(r)
    out: dict[str, list[dict]] = defaultdict(list)
    for (fam, op, *_), rows in groups.items():
        pyg = [r for r in rows if r.get("kind") == "pygen" and r.get("correct", True) is not False]
        if not pyg:
            continue
        best = min(pyg, key=lambda r: r["median_ms"])
        ratios = {}
        for b in rows:
            if b.get("kind") == "baseline":
                x = _ratio(best, b)
                if x is not None:
                    ratios[b["backend"]] = x
        out[fam].append({"op": op, "best": best["backend"], "ratios": ratios})
    return dict(out)


def pick_baseline(fam: str, cases: list[dict]) -> str | None:
    timed = {b for c in cases for b in c["ratios"]}
    for b in BASELINES.get(fam, ()) + tuple(sorted(timed)):
        if b in timed:
            return b
    return None


def ratio_cell(fam: str, cases: list[dict]) -> str:
    b = pick_baseline(fam, cases)
    if b is None:
        return "-"
    xs = [c["ratios"][b] for c in cases if b in c["ratios"]]
    med = statistics.median(xs)
    spread = f", {min(xs):.2f}-{max(xs):.2f}" if len(xs) > 1 else ""
    return f"{med:.2f}x vs {b} (median of {len(xs)}{spread})"


# ---- the table -------------------------------------------------------------------------------------
def _count(outcomes: dict[str, str], fam: str, op: str | None = None) -> tuple[int, int, int]:
    p = f = s = 0
    for nodeid, st in outcomes.items():
        if family_of_test(nodeid) != fam or (op is not None and kernel_of_test(nodeid) != op):
            continue
        if st in ("PASSED", "XFAIL", "XPASS"):
            p += 1
        elif st in ("FAILED", "ERROR"):
            f += 1
        else:
            s += 1
    return p, f, s


def _pf(p: int, f: int, s: int, unfinished: bool = False) -> str:
    if p + f == 0:
        cell = "skip" if s else "-"
    else:
        cell = f"{p}/{f}" + (" FAIL" if f else "")
    return cell + ("+cut" if unfinished else "")


def build(stage: Path) -> tuple[str, bool]:
    """(the summary text, every check that ran passed)."""
    d = _collect(Path(stage))
    lines = [f"device_run summary ({d['device'] or 'device unknown: no bench record'})"]
    if d["steps"]:

        def state(rc: str) -> str:
            return "ok" if rc == "0" else "CUT" if rc in CUT_RC else "skipped" if rc == "-" else f"rc={rc}"

        lines += textwrap.wrap(
            "steps: " + ", ".join(f"{n} {state(s['rc'])} {s['seconds']}s" for n, s in d["steps"].items()),
            110,
            subsequent_indent="       ",
            break_on_hyphens=False,
        )
    rows, ok = _table_rows(d)
    header = (
        "family",
        "kernel",
        "tests p/f",
        "graph p/f",
        "2-GPU p/f",
        "memcheck",
        "racecheck",
        "bench ok/bad",
        "ratio: fastest pygen vs baseline",
    )
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines.append(fmt.format(*header).rstrip())
    lines.append(fmt.format(*("-" * w for w in widths)).rstrip())
    lines += [fmt.format(*r).rstrip() for r in rows]
    lines += textwrap.wrap(_NOTES, 110, break_on_hyphens=False)
    verdict_lines, ok = _verdict(d, ok)
    return "\n".join(lines + verdict_lines) + "\n", ok


def _collect(stage: Path) -> dict:
    """Everything the summary reads from the staging folder."""
    steps = read_steps(stage)
    tests, tests_cut, _ = pytest_outcomes(stage, "tests")
    graphs_all, graphs_cut, _ = pytest_outcomes(stage, "graphs")
    graphs = {
        k: v
        for k, v in graphs_all.items()  # capture-and-replay (not the CPU case checks)
        if _split(k)[0] == "test_cuda_graphs" and _split(k)[1].startswith("test_capture")
    }
    multi = {k: v for k, v in graphs_all.items() if _split(k)[0] == "test_multi_gpu"}
    san = {}
    for tool in ("memcheck", "racecheck"):
        log = stage / "logs" / f"{tool}.log"
        if log.exists():
            info = parse_sanitizer_log(log.read_text(errors="replace"))
            info["tests"], info["cut"], _ = pytest_outcomes(stage, tool)
            san[tool] = info
    records = read_records(stage)
    return {
        "steps": steps,
        "tests": tests,
        "tests_cut": tests_cut,
        "graphs_all": graphs_all,
        "graphs_cut": graphs_cut,
        "graphs": graphs,
        "multi": multi,
        "san": san,
        "records": records,
        "cases": case_ratios(records),
        "bfail": bench_failures(stage),
        "device": next((r.get("device_name") for r in records if r.get("device_name")), None),
    }


def _san_cells(d: dict, fam: str) -> tuple[list[str], bool]:
    """The memcheck and racecheck cells of a family's row, and whether they passed."""
    cells, ok = [], True
    for tool in ("memcheck", "racecheck"):
        info = d["san"].get(tool)
        if info is None:
            cells.append("-")
            continue
        if info["missing"]:
            cells.append("n/a")
            continue
        p, f, _ = _count(info["tests"], fam)
        errs = sum(len(v) for k, v in info["errors"].items() if family_of_test(k) == fam)
        cut = info["cut"] is not None and family_of_test(info["cut"]) == fam
        if p + f + errs == 0 and not cut:
            cells.append("-")
            continue
        cell = f"{errs} ERR" if errs else ("FAIL" if f else "ok")
        cells.append(f"{cell} {p}/{p + f}" + ("+cut" if cut else ""))
        ok &= not errs and not f
    return cells, ok


def _pygen_ok(records, fam: str, op: str | None = None) -> int:
    return sum(
        1
        for r in records
        if r.get("family") == fam
        and (op is None or r.get("op") == op)
        and r.get("kind") == "pygen"
        and r.get("status") == "ok"
    )


def _table_rows(d: dict) -> tuple[list[tuple], bool]:
    """One row per family (its kernels below it) and the 'other' tests; whether all passed."""
    ok, rows = True, []
    tests, graphs, multi, records, bfail = d["tests"], d["graphs"], d["multi"], d["records"], d["bfail"]
    for fam, ops in FAMILIES.items():
        fam_cases = d["cases"].get(fam, [])
        t, g, mg = _count(tests, fam), _count(graphs, fam), _count(multi, fam)
        san_cells, san_ok = _san_cells(d, fam)
        nbad, nok = len(bfail.get(fam, [])), _pygen_ok(records, fam)
        bench_cell = f"{nok}/{nbad}" + (" FAIL" if nbad else "") if (nok or nbad) else "-"
        ok &= san_ok and not (t[1] or g[1] or mg[1] or nbad)
        rows.append(
            (
                fam,
                "(all)",
                _pf(*t, unfinished=d["tests_cut"] is not None and family_of_test(d["tests_cut"]) == fam),
                _pf(*g, unfinished=d["graphs_cut"] is not None and family_of_test(d["graphs_cut"]) == fam),
                _pf(*mg),
                *san_cells,
                bench_cell,
                ratio_cell(fam, fam_cases),
            )
        )
        extra = sorted({c["op"] for c in fam_cases} - set(ops))
        for op in [o for o in ops if o not in NO_KERNEL] + extra:
            op_cases = [c for c in fam_cases if c["op"] == op]
            tk = _count(tests, fam, op)
            nok_op = _pygen_ok(records, fam, op)
            nbad_op = sum(1 for x in bfail.get(fam, []) if x.split(" ")[0] == op)
            rows.append(
                (
                    "",
                    "  " + op,
                    _pf(*tk) if sum(tk) else "",
                    _pf(*_count(graphs, fam, op)),
                    _pf(*_count(multi, fam, op)),
                    "",
                    "",
                    (f"{nok_op}/{nbad_op}" + (" FAIL" if nbad_op else "")) if (nok_op or nbad_op) else "-",
                    ratio_cell(fam, op_cases) if op_cases else "-",
                )
            )
    other = _count(tests, "other")
    if sum(other):
        rows.append(("other", "(not a family's)", _pf(*other), "", "", "", "", "", ""))
        ok &= not other[1]
    return rows, ok


_NOTES = (
    "p/f: passed/failed (FAIL when any failed; skip: all skipped; -: not run; +cut: the step's time "
    "limit stopped it during this family). memcheck/racecheck: compute-sanitizer over a small subset, "
    "'ok p/n' or the errors it reported (n/a: compute-sanitizer not found). bench ok/bad: pygen backend "
    "rows timed / disagreeing with the reference or raising (not timed). ratio: baseline median / the "
    "fastest pygen backend's median per case (op, shape, dtype, mode; the harness's paired ratio where "
    "it has one), >1 = pygen faster; a kernel's is the median over its cases, the family's the median "
    "over all its cases against its main baseline, the first timed of: "
    + "; ".join(f"{f}: {', '.join(b)}" for f, b in BASELINES.items())
    + "."
)


def _verdict(d: dict, ok: bool) -> tuple[list[str], bool]:
    """The problem lines and the verdict line; whether every check that ran passed (and any ran)."""
    steps, san = d["steps"], d["san"]
    problems = []
    for tool, info in san.items():
        if info["total"] and not any(info["errors"].values()):
            problems.append(f"{tool}: ERROR SUMMARY {info['total']} errors")
            ok = False
        ok &= not any(info["errors"].values())  # also errors outside any test (a start-up failure)
        for nodeid, msgs in info["errors"].items():
            problems.append(f"{tool}: {nodeid}: {msgs[0]}" + (f" (+{len(msgs) - 1} more)" if len(msgs) > 1 else ""))
        if info["warnings"]:
            problems.append(f"{tool}: {info['warnings']} warning(s) (hazards of lower severity; not counted as errors)")
    for fam, items in d["bfail"].items():
        problems += [f"bench {fam}: {x}" for x in items[:5]]
    for name, outcomes in (("tests", d["tests"]), ("graphs", d["graphs_all"])):
        problems += [f"{name}: {st} {n}" for n, st in outcomes.items() if st in ("FAILED", "ERROR")][:10]
    cut = [n for n, s in steps.items() if s["rc"] in CUT_RC]
    failed_steps = [
        n for n, s in steps.items() if s["rc"] not in ("0", "-") + CUT_RC and n not in ("nvidia-smi",)
    ]  # on a CPU nvidia-smi is missing: not a failure
    ok &= not failed_steps
    ran = any((d["tests"], d["graphs_all"], d["records"], *(i["tests"] for i in san.values())))
    out_of_time = [n for n, s in steps.items() if s["rc"] == "-" and "out of time" in s["note"]]
    incomplete = bool(cut or out_of_time)
    verdict = (
        "NO RESULTS"
        if not ran
        else "FAIL"
        if not ok
        else "INCOMPLETE (no failure in what ran)"
        if incomplete
        else "PASS"
    )
    lines = [f"  ! {p}" for p in problems[:25]]
    lines.append(
        f"verdict: {verdict}"
        + (f"; cut short (time limit or signal): {', '.join(cut)}" if cut else "")
        + (f"; not run, out of time: {', '.join(out_of_time)}" if out_of_time else "")
        + (f"; steps with a non-zero exit: {', '.join(failed_steps)}" if failed_steps else "")
    )
    return lines, ok and ran


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", help="the folder with logs/ and results/ (device_run.sh's staging folder)")
    ap.add_argument("--out", help="also write the summary to this file")
    ap.add_argument("--quiet", action="store_true", help="print nothing")
    args = ap.parse_args(argv)
    text, ok = build(Path(args.stage))
    if args.out:
        Path(args.out).write_text(text)
    if not args.quiet:
        sys.stdout.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
