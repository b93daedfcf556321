#!/usr/bin/env bash
# The one script for the lent GPU machine (an H200; no package registry there, torch/triton/nvcc
# preinstalled). Run from anywhere inside the checkout:
#
#     bash bench/device_run.sh            # logs and results under $OUT (./out when unset)
#
# Steps, each under `timeout`, all inside BUDGET_S seconds (default 480: the session's 15 device
# minutes include the machine start; a step gets min(its own limit, what is left)):
#   1. nvidia-smi
#   2. pip install --no-build-isolation --no-deps -e .   (PYGEN_CUDA_ARCHS defaults to 90a here:
#      one target instead of two halves the nvcc time)
#   3. pygen info
#   4. pytest -q on the CUDA-parametrised tests of every family (-k cuda; the CPU tests are CI's),
#      at most 20 failures, so one broken kernel does not hide the others
#   5. pygen bench per family (roi, made, flows, mla, moe, fp8: default GPU shapes, bfloat16 except
#      flows in float32, fwd and fwd+bwd, eager reference and third-party baselines), each family
#      with an equal share of the time left (--max-time stops it cleanly), JSON lines to
#      $OUT/results/bench.jsonl (split at the end into $OUT/results/<device>/<family>.jsonl, the
#      layout of bench/results/). FAMILIES="mla moe" picks families; BENCH_COMPILE=1 adds the
#      torch.compile baseline (compiles dominate the time).
# (pygen inspect needs no GPU, so it is not spent on device time: run it on any machine.)
# SKIP_INSTALL=1 / SKIP_TESTS=1 skip steps 2 / 4 and QUICK=1 benchmarks the quick shapes (to try
# the script out on a CPU machine where pygen is already installed),
# BUDGET_S and TAIL_LINES tune the budget and the echoed log tails.
# Exit status: the first failing step's, else 0. Every step's output is in $OUT/logs/<step>.log
# and its tail is echoed. On CPU (no nvidia-smi) the GPU-only steps fail fast and the rest run.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/out}"
mkdir -p "$OUT/logs" "$OUT/results"
BUDGET_S="${BUDGET_S:-480}"
START=$(date +%s)
STATUS=0
export PYGEN_CUDA_ARCHS="${PYGEN_CUDA_ARCHS:-90a}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# step NAME LIMIT_S CMD...: run CMD under timeout min(LIMIT_S, time left); log, echo the tail.
step() {
    local name="$1" limit="$2"; shift 2
    local rem; rem=$(left)
    if (( rem < 15 )); then
        echo "== $name: skipped, ${rem}s of the ${BUDGET_S}s budget left"
        return 0
    fi
    (( limit > rem )) && limit=$rem
    echo "== $name (limit ${limit}s, ${rem}s left): $*"
    local t0; t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
    local rc=$?
    echo "-- $name: rc=$rc in $(( $(date +%s) - t0 ))s$([ $rc -eq 124 ] && echo ' (timed out)')"
    tail -n "${TAIL_LINES:-25}" "$OUT/logs/$name.log"
    if (( rc != 0 && STATUS == 0 )); then STATUS=$rc; fi
    return $rc
}

step nvidia-smi 20 nvidia-smi
if [ "${SKIP_INSTALL:-0}" = 1 ]; then
    echo "== install: skipped (SKIP_INSTALL=1)"
else
    step install 150 "$PY" -m pip install --no-build-isolation --no-deps -e . || { echo "install failed"; exit 1; }
fi
step info 60 "$PY" -m pygen info
if [ "${SKIP_TESTS:-0}" = 1 ]; then
    echo "== tests: skipped (SKIP_TESTS=1)"
else
    step tests 150 "$PY" -m pytest -q --maxfail=20 -k cuda -p no:cacheprovider tests
fi
QUICK_FLAG=(); [ "${QUICK:-0}" = 1 ] && QUICK_FLAG=(--quick)
FAMS=(${FAMILIES:-roi made flows mla moe fp8})
n=${#FAMS[@]}
for fam in "${FAMS[@]}"; do
    share=$(( ($(left) - 10) / n )); n=$(( n - 1 ))
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
        esac
    fi
    step "bench-$fam" "$share" "$PY" -m pygen bench "$fam" --dtype "$dtype" "${base[@]}" \
        --json "$OUT/results/bench.jsonl" --no-progress --max-time $(( share - 15 )) "${QUICK_FLAG[@]}"
done
# one file per family, as in bench/results/<device>/<family>.jsonl
if [ -s "$OUT/results/bench.jsonl" ]; then
    "$PY" - "$OUT/results" <<'EOF'
import collections, json, pathlib, sys
root = pathlib.Path(sys.argv[1])
by = collections.defaultdict(list)
for line in (root / "bench.jsonl").read_text().splitlines():
    if line.strip():
        r = json.loads(line)
        by[(r.get("device_tag", "unknown"), r.get("family", "unknown"))].append(line)
for (tag, fam), lines in by.items():
    d = root / tag
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{fam}.jsonl").write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} lines -> {d / (fam + '.jsonl')}")
EOF
fi
echo "== done in $(( $(date +%s) - START ))s, status $STATUS; logs in $OUT/logs, results in $OUT/results"
exit $STATUS
