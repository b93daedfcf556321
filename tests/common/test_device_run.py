"""bench/device_run.sh (the one script for the lent GPU machine) and bench/device_summary.py (its
closing table), on the CPU: the summary on synthetic logs and results, the script end to end with
the slow steps skipped (2 files in $OUT, the archive holding logs/ and results/), a SIGTERM in the
middle of a step (still 2 files), the unpack helper, and the lists both depend on (families' ops,
the compute-sanitizer test ids)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from helpers import public_ops

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "device_run.sh"
sys.path.insert(0, str(ROOT / "bench"))
import device_summary as S  # noqa: E402  (bench/ is not a package on sys.path)


# ---- the summary on synthetic inputs ----------------------------------------------------------------
def _rec(fam, op, backend, kind, ms, label="s1", mode="fwd", vs=None, **kw):
    r = {
        "family": fam,
        "op": op,
        "backend": backend,
        "kind": kind,
        "median_ms": ms,
        "p20_ms": ms * 0.9,
        "p80_ms": ms * 1.1,
        "status": "ok",
        "correct": True,
        "shape_label": label,
        "dtype": "bfloat16",
        "mode": mode,
        "device_name": "NVIDIA H200",
        "device_tag": "h200",
    }
    if vs:
        r["vs"] = vs
    r.update(kw)
    return r


TESTS_LOG = """\
============================= test session starts ==============================
collecting ... collected 9 items
tests/roi/test_roi_ops.py::test_forward_matches_reference[nchw-roi_align-cuda-cuda] PASSED [ 10%]
tests/roi/test_roi_ops.py::test_forward_matches_reference[nchw-roi_align-cuda-triton] PASSED [ 20%]
tests/roi/test_roi_ops.py::test_backward_matches_reference[roi_pool-cuda-cuda] FAILED [ 30%]
tests/mla/test_mla_ops.py::test_decode_matches_reference[L(37, 1)-sq2-h16-p4-s3-cuda-triton] PASSED [ 40%]
[gw1] [ 50%] PASSED tests/moe/test_moe_ops.py::test_align_contract_and_reference[idt0-37-6-16-4-cuda-cuda]
[gw0] [ 60%] SKIPPED tests/moe/test_moe_ops.py::test_route_matches_reference[T0E16k2g4-2-sigmoid-cuda-triton]
tests/common/test_multi_program.py::test_slogdet_several_programs[cuda-triton] PASSED [ 70%]
tests/common/test_cli.py::test_bench_device_cuda_without_gpu PASSED [ 80%]
tests/fp8/test_fp8_ops.py::test_fp8_gemm_vs_float64[7-256-256] PASSED [ 90%]
tests/fp8/test_fp8_ops.py::test_fp8_gemm_vs_float64[64-200-384] """  # cut by the time limit

JUNIT_GRAPHS = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_cuda_graphs" name="test_capture_and_replay_matches_eager[roi-roi_align-cuda]"/>
<testcase classname="tests.test_cuda_graphs" name="test_capture_and_replay_matches_eager[roi-roi_align.list-triton]"/>
<testcase classname="tests.test_cuda_graphs" name="test_capture_and_replay_matches_eager[moe-fused_moe-triton]">
<failure message="boom">AssertionError</failure></testcase>
<testcase classname="tests.test_cuda_graphs" name="test_case_inputs_refill_and_change_the_result[moe-fused_moe]"/>
<testcase classname="tests.test_multi_gpu" name="test_runs_on_cuda1_while_cuda0_is_current[roi-roi_align-cuda]">
<skipped message="needs two CUDA GPUs"/></testcase>
</testsuite></testsuites>
"""

MEMCHECK_LOG = """\
========= COMPUTE-SANITIZER
============================= test session starts ==============================
tests/roi/test_roi_ops.py::test_forward_matches_reference[nchw-roi_align-cuda-triton] PASSED
tests/mla/test_mla_ops.py::test_cache_append_round_trip[bf16-cuda-triton] ========= Invalid __global__ write
=========     at _mla_cache_append_fwd_kernel+0x1a0
=========     by thread (3,0,0) in block (1,0,0)
=========     Address 0x7f00 is out of bounds
=========
PASSED
tests/made/test_made_ops.py::test_masked_linear_matches_reference[9x20x17-None-ge-sorted-cuda-triton] PASSED
========= ERROR SUMMARY: 1 error
"""

RACECHECK_LOG = """\
========= COMPUTE-SANITIZER
tests/moe/test_moe_ops.py::test_align_contract_and_reference[idt0-37-6-16-4-cuda-cuda] PASSED
========= Warning: Race reported between Read access at 0x10 in _moe_align_scan_kernel
=========     and Write access at 0x20 in _moe_align_scan_kernel [2 hazards]
tests/roi/test_roi_ops.py::test_forward_matches_reference[nchw-roi_align-cuda-cuda] PASSED
========= RACECHECK SUMMARY: 1 hazard displayed (0 errors, 1 warning)
========= ERROR SUMMARY: 0 errors
"""


def _stage(tmp_path: Path) -> Path:
    st = tmp_path / "stage"
    (st / "logs").mkdir(parents=True)
    (st / "results").mkdir()
    (st / "logs" / "steps.tsv").write_text(
        "nvidia-smi\t0\t1\t20\t\ninstall\t0\t80\t150\t\ninfo\t0\t4\t30\t\ntests\t124\t150\t150\t\n"
        "graphs\t1\t40\t60\t\nmemcheck\t99\t50\t60\t\nracecheck\t0\t20\t30\t\nbench-roi\t0\t30\t30\t\n"
        "bench-moe\t1\t30\t30\t\nbench-fp8\t-\t0\t20\tskipped: out of time\n"
    )
    (st / "logs" / "tests.log").write_text(TESTS_LOG)
    (st / "logs" / "graphs.log").write_text("(junit wins)\n")
    (st / "logs" / "junit-graphs.xml").write_text(JUNIT_GRAPHS)
    (st / "logs" / "memcheck.log").write_text(MEMCHECK_LOG)
    (st / "logs" / "racecheck.log").write_text(RACECHECK_LOG)
    (st / "logs" / "bench-moe.log").write_text(
        "== moe: 3 op(s)\nnote: MISMATCH moe_route fwd bfloat16 pygen:triton: max abs err 0.5\n"
        "note: fused_moe fwd+bwd bfloat16 pygen:triton: RuntimeError: CUDA error: out of memory\n"
        "note: baseline transformers:grouped_mm differs from the reference on moe_route fwd bfloat16\n"
    )
    recs = [
        # roi_align: the paired ratio of the fastest pygen backend (cuda) is used: 2.9
        _rec(
            "roi",
            "roi_align",
            "pygen:cuda",
            "pygen",
            1.0,
            vs={"torchvision": {"ratio": 2.9}, "reference": {"ratio": 9.0}},
        ),
        _rec("roi", "roi_align", "pygen:triton", "pygen", 2.0, vs={"torchvision": {"ratio": 1.45}}),
        _rec("roi", "roi_align", "torchvision", "baseline", 3.0),
        _rec("roi", "roi_align", "reference", "baseline", 9.0),
        # roi_pool: no vs (an old line): medians, 1.5
        _rec("roi", "roi_pool", "pygen:triton", "pygen", 1.0),
        _rec("roi", "roi_pool", "torchvision", "baseline", 1.5),
        # ps_roi_pool: only the reference timed; not in the torchvision headline
        _rec("roi", "ps_roi_pool", "pygen:triton", "pygen", 1.0),
        _rec("roi", "ps_roi_pool", "reference", "baseline", 5.0),
        # moe: no third-party baseline timed: the reference; two cases of fused_moe
        _rec("moe", "fused_moe", "pygen:triton", "pygen", 1.0, vs={"reference": {"ratio": 4.0}}),
        _rec("moe", "fused_moe", "reference", "baseline", 4.0),
        _rec("moe", "fused_moe", "pygen:triton", "pygen", 1.0, label="s2", vs={"reference": {"ratio": None}}),
        _rec("moe", "fused_moe", "reference", "baseline", 2.0, label="s2"),
        _rec("moe", "moe_layer", "pygen:triton", "pygen", 1.0),
        _rec("moe", "moe_layer", "reference", "baseline", 3.0),
    ]
    (st / "results" / "bench.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + '\n{"cut": tr\n')
    return st


def _row(text: str, fam: str, kernel: str) -> list[str]:
    """The cells of one table row, cut at the columns of the dashes line under the header."""
    lines = text.splitlines()
    dash = next(i for i, line in enumerate(lines) if line.startswith("------"))
    spans, pos = [], 0
    for part in lines[dash].split("  "):
        spans.append((pos, pos + len(part)))
        pos += len(part) + 2
    cur = None
    for line in lines[dash + 1 :]:
        if not line.strip() or line.startswith(("p/f", "verdict", "  !")):
            continue
        cells = [line[a : b + 1 if i == len(spans) - 1 else b].strip() for i, (a, b) in enumerate(spans)]
        cells[-1] = line[spans[-1][0] :].strip()
        if cells[0]:
            cur = cells[0]
        if cur == fam and cells[1] == kernel:
            return cells
    raise AssertionError(f"no row {fam}/{kernel} in\n{text}")


def test_summary_on_synthetic_stage(tmp_path):
    text, ok = S.build(_stage(tmp_path))
    assert not ok
    assert "NVIDIA H200" in text.splitlines()[0]
    roi = _row(text, "roi", "(all)")
    # tests: 2 passed, 1 failed; graphs: 2 passed; 2-GPU: skipped; memcheck ok 1/1; racecheck ok 1/1
    assert roi[2:7] == ["2/1 FAIL", "2/0", "skip", "ok 1/1", "ok 1/1"], roi
    # headline: median of roi_align 2.9 and roi_pool 1.5 against torchvision
    assert roi[-1] == "2.20x vs torchvision (median of 2, 1.50-2.90)", roi
    assert _row(text, "roi", "roi_align")[-1] == "2.90x vs torchvision (median of 1)"
    assert _row(text, "roi", "ps_roi_pool")[-1] == "5.00x vs reference (median of 1)"
    mla = _row(text, "mla", "(all)")
    assert mla[2] == "1/0" and mla[5].startswith("1 ERR"), mla
    fp8 = _row(text, "fp8", "(all)")
    assert fp8[2] == "1/0+cut", fp8  # the step's limit stopped it in fp8
    moe = _row(text, "moe", "(all)")
    assert moe[3] == "0/1 FAIL" and moe[-2] == "3/2 FAIL", moe
    assert moe[-1] == "3.00x vs reference (median of 3, 2.00-4.00)", moe
    assert "steps: nvidia-smi ok 1s" in text and "tests CUT 150s" in text
    assert _row(text, "moe", "moe_layer")[-1].startswith("3.00x vs reference")  # a bench-only op gets a row
    assert _row(text, "moe", "fused_moe")[3] == "0/1 FAIL"
    flows = _row(text, "flows", "(all)")
    assert flows[2] == "1/0", flows  # test_multi_program's slogdet, by keyword
    assert "other" in text and "memcheck: tests/mla/test_mla_ops.py::test_cache_append_round_trip" in text
    assert "bench moe: moe_route fwd bfloat16 pygen:triton: MISMATCH" in text
    assert "bench moe: fused_moe fwd+bwd bfloat16 pygen:triton: error" in text
    assert "cut short (time limit or signal): tests" in text and "not run, out of time: bench-fp8" in text
    assert text.rstrip().splitlines()[-1].startswith("verdict: FAIL")


def test_summary_cli_and_missing_sanitizer(tmp_path):
    st = tmp_path / "st"
    (st / "logs").mkdir(parents=True)
    (st / "logs" / "memcheck.log").write_text("compute-sanitizer not found (...): SANITIZER UNAVAILABLE\n")
    (st / "logs" / "tests.log").write_text(
        "tests/roi/test_roi_ops.py::test_forward_matches_reference[nchw-roi_align-cuda-cuda] PASSED [100%]\n"
    )
    out = tmp_path / "summary.txt"
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "device_summary.py"), str(st), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert out.read_text() == res.stdout
    roi = _row(res.stdout, "roi", "(all)")
    assert roi[2] == "1/0" and roi[5] == "n/a" and roi[6] == "-", roi
    assert "verdict: PASS" in res.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    text, ok = S.build(empty)
    assert not ok and "verdict: NO RESULTS" in text


def test_summary_incomplete_without_failures(tmp_path):
    st = tmp_path / "st"
    (st / "logs").mkdir(parents=True)
    (st / "logs" / "tests.log").write_text(
        "tests/flows/test_flows_ops.py::test_slogdet_matches_torch[cuda-triton] PASSED [ 50%]\n"
        "tests/flows/test_flows_ops.py::test_slogdet_backward_matches_reference[cuda-triton] "
    )
    (st / "logs" / "steps.tsv").write_text("tests\t124\t150\t150\t\ngraphs\t-\t0\t60\tskipped: out of time\n")
    text, ok = S.build(st)
    assert ok  # every check that ran passed
    assert _row(text, "flows", "(all)")[2] == "1/0+cut"
    assert text.rstrip().splitlines()[-1] == (
        "verdict: INCOMPLETE (no failure in what ran); cut short (time limit "
        "or signal): tests; not run, out of time: graphs"
    )


def test_parse_pytest_log_with_captured_output_and_xdist():
    log = (
        "tests/test_a.py::test_x[p q] some output\nmore output\nPASSED\n"
        "tests/test_a.py::test_y FAILED\n"
        "[gw3] [ 50%] ERROR tests/test_b.py::test_z[1-2]\n"
        "FAILED tests/test_a.py::test_y - AssertionError: no\n"
        "tests/test_c.py::test_w[cuda] "
    )
    out, unfinished = S.parse_pytest_log(log)
    assert out == {
        "tests/test_a.py::test_x[p q]": "PASSED",
        "tests/test_a.py::test_y": "FAILED",
        "tests/test_b.py::test_z[1-2]": "ERROR",
    }
    assert unfinished == "tests/test_c.py::test_w[cuda]"


def test_family_and_kernel_of_a_test():
    f, k = S.family_of_test, S.kernel_of_test
    assert f("tests/moe/test_moe_fp8.py::test_fused_moe_fp8_bf16_input_and_empty[cuda-triton]") == "moe"
    assert f("tests.test_cuda_graphs::test_capture_and_replay_matches_eager[fp8-fp8_gemm-triton]") == "fp8"
    assert k("tests.test_cuda_graphs::test_capture_and_replay_matches_eager[roi-roi_align.list-cuda]") == "roi_align"
    assert k("tests/roi/test_roi_ops.py::test_forward_matches_reference[nchw-ps_roi_align-cuda-cuda]") == "ps_roi_align"
    assert f("tests/common/test_multi_program.py::test_actnorm_several_programs[cuda-triton-3]") == "flows"
    assert f("tests/common/test_cli.py::test_info_runs") == "other"


def test_family_lists_cover_the_public_ops():
    public = public_ops()
    listed = [op for fam in S.FAMILIES.values() for op in fam]
    assert len(listed) == len(set(listed))
    assert set(listed) == public, set(listed) ^ public
    assert set(S.BASELINES) == set(S.FAMILIES)


def test_sanitizer_test_ids_are_collected():
    ids = {}
    for line in (ROOT / "bench" / "device_sanitizer.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            tool, nodeid = line.split(" ", 1)
            assert tool in ("memcheck", "racecheck"), line
            ids.setdefault(tool, []).append(nodeid)
    assert ids["racecheck"] and all(i.endswith("-cuda-cuda]") for i in ids["racecheck"])  # csrc only
    fams = {S.family_of_test(i) for i in ids["memcheck"]}
    assert fams == set(S.FAMILIES), fams  # every family in the memcheck subset
    wanted = sorted(set(ids["memcheck"] + ids["racecheck"]))
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *wanted],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    collected = {line.strip() for line in res.stdout.splitlines()}
    assert set(wanted) <= collected, set(wanted) - collected


# ---- the script ----------------------------------------------------------------------------------
def _env(tmp_path: Path, **extra) -> dict:
    env = dict(
        os.environ,
        SKIP_INSTALL="1",
        SKIP_TESTS="1",
        SKIP_GRAPHS="1",
        SKIP_SANITIZER="1",
        QUICK="1",
        OUT=str(tmp_path / "out"),
        PYTHON=sys.executable,
        BUDGET_S="300",
        PACK_EVERY_S="2",
        PYGEN_RESULTS_DIR=str(tmp_path / "cache"),
    )
    env.pop("TRITON_INTERPRET", None)
    env.update(extra)
    return env


def _archive_names(out: Path) -> set[str]:
    with tarfile.open(out / "device_run.tar.gz") as tar:
        return set(tar.getnames())


def test_device_run_cpu_end_to_end_two_files(tmp_path):
    """One small benchmark really runs (roi_pool fwd, quick shapes); the correctness steps are
    skipped (the full CPU run, SKIP_INSTALL=1 QUICK=1, takes minutes)."""
    env = _env(tmp_path, FAMILIES="roi", BENCH_ARGS="--op roi_pool --mode fwd --no-copy")
    res = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = tmp_path / "out"
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == ["device_run.tar.gz", "summary.txt"], (files, res.stdout[-3000:])
    names = _archive_names(out)
    for n in ("logs/steps.tsv", "logs/info.log", "logs/bench-roi.log", "logs/summary.txt"):
        assert n in names, (n, names)
    jsonl = [n for n in names if n.startswith("results/") and n.endswith("/roi.jsonl")]
    assert jsonl and "results/bench.jsonl" not in names, names  # split per device, no duplicate
    summary = (out / "summary.txt").read_text()
    roi = _row(summary, "roi", "roi_pool")
    assert roi[-2].split("/")[0] != "0" and "x vs" in roi[-1], roi
    assert summary in res.stdout  # the table is printed last
    assert "staging folder kept" not in res.stdout  # its own staging folder is removed
    # nvidia-smi is missing here: its 127 is the exit status, the rest ran
    assert res.returncode in (0, 127), res.stdout[-3000:]
    # unpack: the JSON lines land in RESULTS_DIR/<device>/roi.jsonl
    dest = tmp_path / "results"
    res2 = subprocess.run(
        ["bash", str(SCRIPT), "unpack", str(out / "device_run.tar.gz"), str(dest)],
        env=dict(env, UNPACK_DIR=str(tmp_path / "unpacked")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res2.returncode == 0, res2.stderr
    got = list(dest.glob("*/roi.jsonl"))
    assert len(got) == 1 and all(json.loads(line)["op"] == "roi_pool" for line in got[0].read_text().splitlines())
    assert (tmp_path / "unpacked" / "logs" / "steps.tsv").exists() and "verdict:" in res2.stdout


def test_device_run_sigterm_mid_step_still_packs(tmp_path):
    """SIGTERM while a step runs: the step is stopped, recorded as interrupted, the pair is packed,
    the exit status is 143. The step is a stand-in `pygen bench` that sleeps (PYTHON wrapper)."""
    wrapper = tmp_path / "py"
    wrapper.write_text(
        f'#!/bin/bash\nif [ "$2" = pygen ] && [ "$3" = bench ]; then echo started; sleep 120; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    stage = tmp_path / "stage"
    env = _env(tmp_path, FAMILIES="roi", PYTHON=str(wrapper), STAGE=str(stage))
    proc = subprocess.Popen(
        ["bash", str(SCRIPT)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        log = stage / "logs" / "bench-roi.log"
        deadline = time.time() + 240
        while not (log.exists() and "started" in log.read_text()):
            assert time.time() < deadline and proc.poll() is None, "the bench step never started"
            time.sleep(0.5)
        time.sleep(3)  # a background pack runs meanwhile (PACK_EVERY_S=2)
        proc.send_signal(signal.SIGTERM)
        text, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, text[-3000:]
    assert "caught SIGTERM: stopping step bench-roi" in text
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["device_run.tar.gz", "summary.txt"]
    assert "logs/bench-roi.log" in _archive_names(out)
    steps = (stage / "logs" / "steps.tsv").read_text()
    assert "bench-roi\t143\t" in steps and "interrupted by SIGTERM" in steps
    assert stage.exists()  # a STAGE given by the caller is kept
