#!/usr/bin/env bash
# The one script for the lent GPU machine (an H100 or H200: no package registry there; torch,
# triton, nvcc, compute-sanitizer, pytest and pytest-xdist preinstalled; only 8 files, no more
# than 2 folders down, come back from $OUT). Run from anywhere inside the checkout:
#
#     bash bench/device_run.sh         # everything in $OUT (./out when unset): 2 files,
#                                      #   device_run.tar.gz (logs/ and results/) and summary.txt
#
# and afterwards, on this machine, to put the JSON lines where they are kept:
#
#     bash bench/device_run.sh unpack PATH/device_run.tar.gz [RESULTS_DIR]
#         # extracts into a new /tmp/device_run.* folder (UNPACK_DIR to choose), appends its
#         # results/<device>/<family>.jsonl to RESULTS_DIR/<device>/<family>.jsonl (default
#         # bench/results) and prints the summary; commit them with the commit they measured.
#     (by hand: tar -xzf device_run.tar.gz -C DIR; cat DIR/results/h200/roi.jsonl >> bench/results/h200/roi.jsonl)
#
# Steps, in this order so that the correctness results exist even when the benchmarks run out of
# time, each under `timeout`, all inside BUDGET_S seconds (default 480: the session's 15 device
# minutes include the machine start and a call may run 600 s). A step gets min(its limit, the
# time left - RESERVE_S); one with under 15 s is skipped:
#   1. nvidia-smi                                                         20 s
#   2. pip install --no-build-isolation --no-deps -e .                    INSTALL_S=150
#      (PYGEN_CUDA_ARCHS defaults to 90a: one target halves the nvcc time)
#   3. pygen info                                                         30 s
#   4. tests: pytest -v of the CUDA-parametrised tests of every family   TESTS_S=150
#      (-k cuda) and the fp8 files (they run on the GPU when there is one), --maxfail=20,
#      TEST_WORKERS=8 xdist workers when pytest-xdist is importable (Triton compiles in parallel)
#   5. graphs: tests/common/test_cuda_graphs.py (capture/replay of every op, value checks off) and
#      tests/common/test_multi_gpu.py (cuda:1 while cuda:0 is current; skipped on one GPU)  GRAPHS_S=60
#   6. memcheck: compute-sanitizer --tool memcheck over the small subset in
#      bench/device_sanitizer.txt (pytest -v -s -x; PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that the
#      caching allocator does not hide out-of-bounds accesses)                MEMCHECK_S=60
#   7. racecheck: compute-sanitizer --tool racecheck over the CUDA C++ (csrc) subset  RACECHECK_S=30
#      (RACECHECK_ARGS adds options, e.g. "--kernel-name kns=_moe_"). No compute-sanitizer:
#      both are skipped and the log and table say so.
#   8. pygen bench per family (roi made flows mla moe fp8 losses: default GPU shapes, bfloat16 except
#      flows in float32, fwd and fwd+bwd, the eager reference and the family's third-party
#      baselines), each an equal share of what is left (at least 20 s; --max-time stops it
#      cleanly), JSON lines split at the end into results/<device>/<family>.jsonl.
#      FAMILIES="mla moe" picks families; BENCH_COMPILE=1 adds the torch.compile baseline;
#      BENCH_ARGS adds options to every `pygen bench` (e.g. "--op roi_align --mode fwd").
#   9. the summary table (bench/device_summary.py: per family its kernels, pass/fail of every
#      check above, the headline ratio against its main baseline), printed last, and the packing
#      (RESERVE_S=15 is kept for it).
# Logs and results are written to a staging folder outside $OUT (STAGE; default a new
# /tmp/device_run.* folder, removed at the end unless KEEP_STAGE=1) and packed into
# $OUT/device_run.tar.gz + $OUT/summary.txt after every step, every PACK_EVERY_S=30 s while a step
# runs, and on exit or SIGTERM/SIGINT (which stop the running step first): a run cut short by the
# tool's time limit still returns what it measured, in 2 files.
# (pygen inspect needs no GPU, so it is not spent on device time: run it on any machine.)
# SKIP_INSTALL=1 / SKIP_TESTS=1 / SKIP_GRAPHS=1 / SKIP_SANITIZER=1 skip steps 2 / 4 / 5 / 6-7,
# FAMILIES="" skips the benchmarks, QUICK=1 benchmarks the quick shapes (to try the script out on
# a CPU machine where pygen is already installed: SKIP_INSTALL=1 QUICK=1 BUDGET_S=300), PYTHON
# picks the interpreter (default python3), TAIL_LINES (15) the echoed tail of each step's log.
# Exit status: the first failing step's (on a CPU, nvidia-smi's 127), else 0; 128+n on signal n.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$(command -v python3 || command -v python)}"

# split_results DIR: DIR/bench.jsonl -> DIR/<device_tag>/<family>.jsonl (bench/results' layout)
split_results() {
    [ -s "$1/bench.jsonl" ] || return 0
    "$PY" - "$1" <<'EOF' && rm -f "$1/bench.jsonl"
import collections, json, pathlib, sys
root = pathlib.Path(sys.argv[1])
by = collections.defaultdict(list)
for line in (root / "bench.jsonl").read_text().splitlines():
    if line.strip():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:   # a line cut short when a step was killed
            continue
        by[(r.get("device_tag", "unknown"), r.get("family", "unknown"))].append(line)
for (tag, fam), lines in by.items():
    d = root / tag
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{fam}.jsonl").write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} lines -> results/{tag}/{fam}.jsonl")
EOF
}

if [ "${1:-}" = unpack ]; then
    archive="${2:?usage: bash bench/device_run.sh unpack ARCHIVE [RESULTS_DIR]}"
    dest="${3:-$ROOT/bench/results}"
    dir="${UNPACK_DIR:-$(mktemp -d /tmp/device_run.XXXXXX)}"
    mkdir -p "$dir" && tar -xzf "$archive" -C "$dir" || exit 1
    split_results "$dir/results"          # an archive packed before the final split (a killed run)
    found=0
    for f in "$dir"/results/*/*.jsonl; do
        [ -e "$f" ] || continue
        found=1
        tag="$(basename "$(dirname "$f")")"
        mkdir -p "$dest/$tag"
        cat "$f" >> "$dest/$tag/$(basename "$f")"
        echo "$(wc -l < "$f") lines appended to $dest/$tag/$(basename "$f")"
    done
    [ "$found" = 1 ] || echo "no JSON lines in $archive (no benchmark finished)"
    echo "unpacked into $dir (logs/, results/)"
    [ -f "$dir/logs/summary.txt" ] && cat "$dir/logs/summary.txt"
    exit 0
fi

OUT="${OUT:-$ROOT/out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [ -n "${STAGE:-}" ]; then
    mkdir -p "$STAGE"; OWN_STAGE=0
else
    STAGE="$(mktemp -d /tmp/device_run.XXXXXX)"; OWN_STAGE=1
fi
mkdir -p "$STAGE/logs" "$STAGE/results"
ARCHIVE="$OUT/device_run.tar.gz"
rm -f "$ARCHIVE" "$OUT/summary.txt" "$OUT"/.device_run.*.tmp "$OUT"/.summary.*.tmp
BUDGET_S="${BUDGET_S:-480}"
RESERVE_S="${RESERVE_S:-15}"
PACK_EVERY_S="${PACK_EVERY_S:-30}"
START=$(date +%s)
STATUS=0
CUR_PID=""
CUR_NAME=""
PACKER_PID=""
FINISHED=0
export PYGEN_CUDA_ARCHS="${PYGEN_CUDA_ARCHS:-90a}"
export PYTHONUNBUFFERED=1

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# record NAME RC SECONDS LIMIT [NOTE]: one line of $STAGE/logs/steps.tsv (read by device_summary.py)
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >> "$STAGE/logs/steps.tsv"; }

# pack: (re)write $OUT/summary.txt and $OUT/device_run.tar.gz from $STAGE, each through a
# temporary file and a rename, so that $OUT always holds a complete pair (2 files)
pack() {
    local me="${BASHPID:-$$}"
    "$PY" "$ROOT/bench/device_summary.py" "$STAGE" --out "$STAGE/logs/.summary.$me" --quiet \
        2> "$STAGE/logs/.summary-err.$me" || true
    if [ -s "$STAGE/logs/.summary.$me" ]; then
        mv -f "$STAGE/logs/.summary.$me" "$STAGE/logs/summary.txt"
        cp "$STAGE/logs/summary.txt" "$OUT/.summary.$me.tmp" && mv -f "$OUT/.summary.$me.tmp" "$OUT/summary.txt"
    fi
    if [ -s "$STAGE/logs/.summary-err.$me" ]; then
        mv -f "$STAGE/logs/.summary-err.$me" "$STAGE/logs/summary-errors.log"
    else
        rm -f "$STAGE/logs/.summary-err.$me" "$STAGE/logs/.summary.$me"
    fi
    tar --exclude='.*' -czf "$OUT/.device_run.$me.tmp" -C "$STAGE" logs results 2>/dev/null
    if [ -s "$OUT/.device_run.$me.tmp" ]; then
        mv -f "$OUT/.device_run.$me.tmp" "$ARCHIVE"
    else
        rm -f "$OUT/.device_run.$me.tmp"
    fi
}

finish() {
    (( FINISHED )) && return 0
    FINISHED=1
    if [ -n "$PACKER_PID" ]; then
        kill "$PACKER_PID" 2>/dev/null
        wait "$PACKER_PID" 2>/dev/null
        PACKER_PID=""
    fi
    split_results "$STAGE/results"
    pack
    rm -f "$OUT"/.device_run.*.tmp "$OUT"/.summary.*.tmp
    echo "== done in $(( $(date +%s) - START ))s, status $STATUS; $OUT holds $(find "$OUT" -type f | wc -l) file(s):" \
         "$(cd "$OUT" && find . -type f | sed 's|^\./||' | tr '\n' ' ')"
    echo "   unpack here with: bash bench/device_run.sh unpack <files_at>/device_run.tar.gz"
    if [ "$OWN_STAGE" = 1 ] && [ "${KEEP_STAGE:-0}" != 1 ]; then
        rm -rf "$STAGE"
    else
        echo "   staging folder kept: $STAGE"
    fi
    echo
    [ -f "$OUT/summary.txt" ] && cat "$OUT/summary.txt"
    return 0
}

on_signal() {
    local sig="$1" code="$2"
    echo "== caught SIG$sig$([ -n "$CUR_NAME" ] && echo ": stopping step $CUR_NAME"); packing what there is"
    if [ -n "$CUR_PID" ]; then
        kill -TERM -- "-$CUR_PID" 2>/dev/null || kill -TERM "$CUR_PID" 2>/dev/null
        for _ in 1 2 3 4 5; do kill -0 "$CUR_PID" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$CUR_PID" 2>/dev/null
        wait "$CUR_PID" 2>/dev/null
        record "$CUR_NAME" "$code" "$(( $(date +%s) - STEP_T0 ))" "-" "interrupted by SIG$sig"
        CUR_PID=""
    fi
    (( STATUS == 0 )) && STATUS=$code
    finish
    exit "$code"
}
trap 'on_signal TERM 143' TERM
trap 'on_signal INT 130' INT
trap 'finish' EXIT

# step NAME LIMIT_S CMD...: run CMD under timeout min(LIMIT_S, time left - RESERVE_S), output to
# logs/NAME.log, echo its tail, record it, pack.
step() {
    local name="$1" limit="$2"; shift 2
    local rem=$(( $(left) - RESERVE_S ))
    if (( rem < 15 )); then
        echo "== $name: skipped, $(left)s of the ${BUDGET_S}s budget left"
        record "$name" "-" 0 "$limit" "skipped: out of time"
        return 0
    fi
    (( limit > rem )) && limit=$rem
    echo "== $name (limit ${limit}s, $(left)s left): $(printf '%q ' "$@")"
    STEP_T0=$(date +%s)
    CUR_NAME="$name"
    timeout --kill-after=10 "$limit" "$@" > "$STAGE/logs/$name.log" 2>&1 &
    CUR_PID=$!
    wait "$CUR_PID"
    local rc=$?
    CUR_PID=""
    CUR_NAME=""
    local secs=$(( $(date +%s) - STEP_T0 ))
    echo "-- $name: rc=$rc in ${secs}s$( (( rc == 124 || rc == 137 )) && echo ' (time limit)')"
    tail -n "${TAIL_LINES:-15}" "$STAGE/logs/$name.log" | sed -e '$a\'    # a line cut by a kill ends too
    record "$name" "$rc" "$secs" "$limit"
    if (( rc != 0 && STATUS == 0 )); then STATUS=$rc; fi
    pack
    return $rc
}

skip() {   # skip NAME WHY
    echo "== $1: skipped ($2)"
    record "$1" "-" 0 0 "skipped: $2"
}

packer() { while :; do for _ in $(seq "$PACK_EVERY_S"); do sleep 1; done; pack; done; }

echo "== device_run: $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
     "$(git diff --quiet 2>/dev/null || echo '(dirty)'), budget ${BUDGET_S}s, python $PY, out $OUT, staging $STAGE"
pack
if (( PACK_EVERY_S > 0 )); then
    packer &
    PACKER_PID=$!
fi

# ---- 1-3: machine, install, info ------------------------------------------------------------------
step nvidia-smi 20 nvidia-smi
if [ "${SKIP_INSTALL:-0}" = 1 ]; then
    skip install "SKIP_INSTALL=1"
else
    step install "${INSTALL_S:-150}" "$PY" -m pip install --no-build-isolation --no-deps -e . \
        || { echo "install failed: nothing else can run"; exit 1; }
fi
step info 30 "$PY" -m pygen info

XDIST=()
if [ "${TEST_WORKERS:-8}" != 0 ] && "$PY" -c "import xdist" 2>/dev/null; then
    XDIST=(-n "${TEST_WORKERS:-8}")
fi

# ---- 4-5: correctness ---------------------------------------------------------------------------
if [ "${SKIP_TESTS:-0}" = 1 ]; then
    skip tests "SKIP_TESTS=1"
else
    step tests "${TESTS_S:-150}" "$PY" -m pytest -v -rfE --maxfail=20 -p no:cacheprovider "${XDIST[@]}" \
        --junitxml="$STAGE/logs/junit-tests.xml" \
        -k "cuda or test_fp8_ops or test_fp8_inputs or test_fp8_modules" \
        --ignore=tests/common/test_cuda_graphs.py --ignore=tests/common/test_multi_gpu.py tests
fi
if [ "${SKIP_GRAPHS:-0}" = 1 ]; then
    skip graphs "SKIP_GRAPHS=1"
else
    step graphs "${GRAPHS_S:-60}" "$PY" -m pytest -v -rfE -p no:cacheprovider "${XDIST[@]}" \
        --junitxml="$STAGE/logs/junit-graphs.xml" tests/common/test_cuda_graphs.py tests/common/test_multi_gpu.py
fi

# ---- 6-7: compute-sanitizer ---------------------------------------------------------------------
find_sanitizer() {
    local c
    for c in "${COMPUTE_SANITIZER:-}" "$(command -v compute-sanitizer 2>/dev/null)" \
             "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" \
             "$(dirname "$(command -v nvcc 2>/dev/null || echo /nonexistent/nvcc)")/compute-sanitizer" \
             /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
             /usr/local/cuda-*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer; do
        if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
    done
    return 1
}

sanitize() {   # sanitize TOOL LIMIT_S [OPTIONS...]: that tool over its ids in bench/device_sanitizer.txt
    local tool="$1" limit="$2"; shift 2
    local ids=() t id
    while read -r t id; do
        [ "$t" = "$tool" ] && ids+=("$id")
    done < <(grep -v '^#' "$ROOT/bench/device_sanitizer.txt")
    step "$tool" "$limit" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        "$SAN" --tool "$tool" --report-api-errors no --print-limit 20 --error-exitcode 99 "$@" \
        "$PY" -m pytest -v -s -x -p no:cacheprovider --junitxml="$STAGE/logs/junit-$tool.xml" "${ids[@]}"
}

if [ "${SKIP_SANITIZER:-0}" = 1 ]; then
    skip memcheck "SKIP_SANITIZER=1"
    skip racecheck "SKIP_SANITIZER=1"
elif SAN="$(find_sanitizer)"; then
    echo "== compute-sanitizer: $SAN"
    sanitize memcheck "${MEMCHECK_S:-60}" --leak-check no
    # shellcheck disable=SC2086  # RACECHECK_ARGS is a list of options
    sanitize racecheck "${RACECHECK_S:-30}" ${RACECHECK_ARGS:-}
else
    msg="compute-sanitizer not found (PATH, \$CUDA_HOME/bin, next to nvcc, /usr/local/cuda*): SANITIZER UNAVAILABLE"
    echo "== $msg"
    for tool in memcheck racecheck; do
        echo "$msg" > "$STAGE/logs/$tool.log"
        record "$tool" "-" 0 0 "skipped: compute-sanitizer not found"
    done
fi

# ---- 8: benchmarks in the time left -------------------------------------------------------------
QUICK_FLAG=(); [ "${QUICK:-0}" = 1 ] && QUICK_FLAG=(--quick)
FAMS=(${FAMILIES-roi made flows mla moe fp8 losses})
n=${#FAMS[@]}
for fam in "${FAMS[@]}"; do
    share=$(( ($(left) - RESERVE_S - 5) / n )); n=$(( n - 1 ))
    (( share < 20 )) && share=20
    dtype=bfloat16; [ "$fam" = flows ] && dtype=float32
    base=()      # the eager reference and the baselines a user would pick (all, with compile, on request)
    if [ "${BENCH_COMPILE:-0}" != 1 ]; then
        base=(--baseline reference)
        case $fam in
            roi) base+=(--baseline torchvision);;
            made) base+=(--baseline "dense masked" --baseline "D passes (dense masked)" --baseline "step loop");;
            mla) base+=(--baseline flashmla --baseline vllm-triton);;
            moe) base+=(--baseline transformers:grouped_mm --baseline vllm:fused_experts);;
            fp8) base+=(--baseline torch.matmul --baseline torch._scaled_mm);;
            losses) base+=(--baseline eager);;
        esac
    fi
    step "bench-$fam" "$share" "$PY" -m pygen bench "$fam" --dtype "$dtype" "${base[@]}" \
        --json "$STAGE/results/bench.jsonl" --no-progress --max-time $(( share - 15 )) "${QUICK_FLAG[@]}" \
        ${BENCH_ARGS:-}
done

# ---- 9: summary and packing (the EXIT trap) -----------------------------------------------------
exit "$STATUS"
