#!/usr/bin/env bash
# The GPU verification run: one call on a lent H200 (torch preinstalled, 16 cores, no
# network) that builds for sm_90, runs the CUDA test suite, the compute-sanitizer checks,
# the benchmark targets and, if time is left, Nsight Compute, and packs every result into
# $OUT (the device tool brings back at most 8 files).
#
# ---- How a session with a GPU runs it (one step) ---------------------------------------
# 1. Here, in the repository root (pytorch-metric-learning, the only peer the GPU image
#    lacks; its requirements numpy, scikit-learn, torch and tqdm are there; .whl/ is
#    git-ignored and travels only when carried):
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#        --platform manylinux2014_x86_64 -d .whl pytorch-metric-learning==2.9.0
# 2. The device tool's run, exactly:
#      command:   bash scripts/gpu_check.sh
#      carry:     [".whl"]
#      timeout_s: 600
#    Nothing else: no build output travels (the machine's Python and torch differ from
#    this one's, so the extension is built there).
# 3. What comes back lies under the reply's files_at: summary.txt (read it first: every
#    stage's verdict lines), tests_cuda.log, sanitizers.txt, benchmarks.txt and
#    gpu_check.tar.gz (everything: logs, benchmark JSON and plots per run, ncu reports).
#    Unpack the archive's bench/ folders into benchmarks/results/<device>/ to commit them.
#    Then give the machine back (give_back), unless a rerun follows at once.
#
# ---- The plan (DEADLINE seconds in all, default 540: under the call's 600) ---------------
# Each stage's time limit is its own or what is left, whichever is smaller; a stage with
# too little time left is skipped, so the archive is always written. Most important first:
#   env          versions, tools, the carried wheels                       ~10 s
#   build        TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=16: nine .cu files,
#                batch_all.cu the critical path (~150 s for two archs
#                on two busy cores here; one arch on 16 cores: ~60-90 s)    <= 210 s
#   sass         HMMA / HGMMA / local-memory counts in the sm_90 code        <= 20 s
#   tests + sanitizers, side by side (tests are CPU-bound oracles, the
#                sanitizers one process): pytest -m cuda -n 16, a per-test
#                timeout, -v so a cut-off log still shows each result;
#                meanwhile the workload plain (coverage of every op), then
#                memcheck, racecheck, initcheck on it, then memcheck --large  <= 240 s
#   benchmarks   alone on the GPU, in order of the targets' weight:
#                batch-hard B = 16384 vs cuBLAS and B = 4096 vs eager (bf16, fp32);
#                the B = 262144 scale rows (batch-hard, batch-all,
#                contrastive); batch-all / contrastive / semi-hard at
#                B = 16384; batch-hard B = 4096 with torch.compile          <= ~300 s
#   ncu          speed of light of the batch-hard kernels and of X @ X.T     what is left
# On a first run expect the later benchmark stages to be cut by the deadline: their lines
# in summary.txt say "skipped", and a second call can run them alone (STAGES below).
#
# ---- Knobs ----------------------------------------------------------------------------
#   DEADLINE=540          the whole script's seconds
#   STAGES="..."          run only these stages (names as above, plus bench_bh, bench_scale,
#                         bench_pairs, bench_compile), e.g. a rerun of what failed
#   GPU_CHECK_DRY_RUN=1   no GPU needed: skips the build, runs the tests' selection (they
#                         skip), the workload on the CPU, tiny CPU benchmarks, and packs
#                         the archive: a check of this script's plumbing and deadline logic
#   PYTHON=python3        the interpreter that holds torch
#   PYTEST_WORKERS=16     pytest-xdist workers
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu_out}
DRY=${GPU_CHECK_DRY_RUN:-0}
DEADLINE=${DEADLINE:-540}
PY=${PYTHON:-python3}
WORKERS=${PYTEST_WORKERS:-16}
STAGES=${STAGES:-env build sass tests sanitizers bench_bh bench_scale bench_pairs bench_compile ncu}
mkdir -p "$OUT"
WORK=$(mktemp -d)
mkdir -p "$WORK/bench" "$WORK/sanitizers" "$WORK/ncu"
SUMMARY=$WORK/summary.txt
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
START=$(date +%s)
MARGIN=20  # seconds kept back for packing the archive

elapsed() { echo $(( $(date +%s) - START )); }
# limit N: N, or the seconds left before the deadline (less the packing margin), if fewer
limit() { local left=$(( DEADLINE - $(elapsed) - MARGIN )); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
note() { echo "$*" | tee -a "$SUMMARY"; }
# want NAME: whether STAGES names it
want() { [[ " $STAGES " == *" $1 "* ]]; }
# enough N: whether a stage still has N seconds to run
enough() { [ "$(limit 100000)" -ge "$1" ] || { note "skipped: under $1 s left"; return 1; }; }
stage() { echo; note "=== [$(elapsed) s] $*"; }
# run_limited N LOG CMD...: CMD under a limit of N seconds (killed with its whole process
# group at the limit), its output to LOG; prints and returns its exit status (124: timed out)
run_limited() {
  local n=$1 log=$2; shift 2
  timeout -k 10 "$(limit "$n")" "$@" > "$log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && note "  (stopped at its time limit)"
  return $rc
}

SAN_PID=
finish() {
  if [ -n "$SAN_PID" ] && kill -0 "$SAN_PID" 2>/dev/null; then kill "$SAN_PID" 2>/dev/null; fi
  stage "done (deadline $DEADLINE s)"
  cp "$SUMMARY" "$OUT/summary.txt"
  [ -f "$WORK/tests_cuda.log" ] && cp "$WORK/tests_cuda.log" "$OUT/"
  [ -f "$WORK/sanitizers.txt" ] && cp "$WORK/sanitizers.txt" "$OUT/"
  [ -f "$WORK/benchmarks.txt" ] && cp "$WORK/benchmarks.txt" "$OUT/"
  tar czf "$OUT/gpu_check.tar.gz" -C "$WORK" . 2>/dev/null
  # The tool brings back files of up to 16 MiB: above 15, pack again without big files.
  if [ "$(stat -c %s "$OUT/gpu_check.tar.gz")" -gt $((15 << 20)) ]; then
    find "$WORK" -type f -size +2M > "$WORK/left_out.txt"
    tar czf "$OUT/gpu_check.tar.gz" -C "$WORK" -X <(sed "s|^$WORK/|./|" "$WORK/left_out.txt") . 2>/dev/null
    echo "archive over 15 MiB: left out $(wc -l < "$WORK/left_out.txt") files over 2 MiB" >> "$OUT/summary.txt"
  fi
  ls -la "$OUT" >> "$OUT/summary.txt"
  rm -rf "$WORK" "$WORK.site"  # everything is in $OUT now
}
trap finish EXIT

# ---- env --------------------------------------------------------------------------------
stage "env (dry run: $DRY)"
SITE=${GPU_CHECK_SITE:-$([ "$DRY" = 1 ] && echo "$WORK.site" || echo /tmp/site)}
if compgen -G ".whl/*.whl" > /dev/null; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
       --target "$SITE" .whl/*.whl > "$WORK/wheels.log" 2>&1; then
    export PYTHONPATH=$PYTHONPATH:$SITE
    note "wheels installed: $(cd .whl && printf '%s ' ./*.whl)"
  else
    note "wheel install FAILED (see wheels.log); continuing without them"
  fi
else
  note "no .whl/: pytorch-metric-learning rows will show n/a unless it is installed"
fi
{
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  echo; uname -a; nproc; free -g 2>/dev/null | head -2
  for t in nvcc compute-sanitizer ncu cuobjdump; do echo "$t: $(command -v $t || echo missing)"; done
  nvcc --version 2>/dev/null | tail -n 2
  "$PY" - <<'EOF'
import importlib, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for m in ("xdist", "pytest_timeout", "hypothesis", "pytorch_metric_learning", "sentence_transformers",
          "matplotlib", "scipy"):
    try:
        mod = importlib.import_module(m)
        print(f"{m}: {getattr(mod, '__version__', 'ok')}")
    except Exception as e:
        print(f"{m}: missing ({type(e).__name__})")
EOF
} > "$WORK/env.txt" 2>&1
grep -E "^python|H200|H100|: missing|missing \(" "$WORK/env.txt" | tee -a "$SUMMARY"

# ---- build ------------------------------------------------------------------------------
if want build; then
  stage "build for sm_90 only (CUDA module required)"
  if [ "$DRY" = 1 ]; then
    note "dry run: build skipped, using the modules already built here"
  else
    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 FASTMINE_REQUIRE_CUDA=1 \
      run_limited 210 "$WORK/build.log" "$PY" setup.py build_ext --inplace
    rc=$?
    note "build rc=$rc ($(elapsed) s so far)"
    tail -n 5 "$WORK/build.log"
    [ $rc -eq 0 ] || { tail -n 30 "$WORK/build.log" >> "$SUMMARY"; exit $rc; }
  fi
  "$PY" -c "import fastmine, torch; print('fastmine.CUDA_AVAILABLE =', fastmine.CUDA_AVAILABLE)" 2>&1 \
    | tail -n 3 | tee -a "$SUMMARY"
fi

# ---- sass -------------------------------------------------------------------------------
if want sass; then
  stage "machine code: tensor-core instructions (HMMA mma.sync, HGMMA wgmma) and local memory"
  SO=$(find fastmine -maxdepth 1 -name '_C_cuda*.so' | head -n 1)
  if command -v cuobjdump > /dev/null; then
    if [ -n "$SO" ] && enough 10; then
      timeout "$(limit 20)" cuobjdump -sass "$SO" 2>&1 | awk '
        /Function :/ {n++} /HMMA/ {h++} /HGMMA/ {g++} /LDL|STL/ {l++} /arch = / {a[$NF]++}
        END {printf "kernels %d, HMMA %d, HGMMA %d, LDL/STL %d; archs:", n, h, g, l;
             for (k in a) printf " %s", k; print ""}' | tee -a "$SUMMARY"
    fi
  else
    note "cuobjdump not found: SASS not checked"
  fi
fi

# ---- tests + sanitizers, side by side ----------------------------------------------------
# The sanitizers watch scripts/gpu_sanitize.py. PYTORCH_NO_CUDA_MEMORY_CACHING=1 gives each
# tensor its own allocation, so that an access past a tensor's end leaves the allocation
# (inside one cached segment memcheck would see a valid address). Racecheck and initcheck
# check fastmine's kernels only (their mangled names hold "fastmine"): torch's own kernels
# are not this project's to fix, and skipping them keeps the run short.
sanitize_chain() {
  local end=$1 log=$WORK/sanitizers.txt w=scripts/gpu_sanitize.py dev=cuda
  [ "$DRY" = 1 ] && dev=cpu
  # until_end N: N, or the seconds before this chain's end, if fewer
  until_end() { local left=$(( end - $(date +%s) )); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
  one() {  # one NAME N CMD...: a step of the chain, bounded by N and by the chain's end
    local name=$1 n; n=$(until_end "$2"); shift 2
    if [ "$n" -lt 15 ]; then echo "$name: skipped (under 15 s left)" >> "$log"; return; fi
    local t0; t0=$(date +%s)
    timeout -k 5 "$n" "$@" > "$WORK/sanitizers/$name.log" 2>&1
    local rc=$?
    {
      echo "$name: rc=$rc ($(( $(date +%s) - t0 )) s$([ $rc -eq 124 ] && echo ', stopped at its limit'))"
      grep -E "SUMMARY|^FAILED|^gpu_sanitize:|^ops reached|^checked pass|Error:|error:" \
        "$WORK/sanitizers/$name.log" | head -n 12 | sed 's/^/  /'
      [ $rc -eq 0 ] || tail -n 3 "$WORK/sanitizers/$name.log" | sed 's/^/  | /'
    } >> "$log"
  }
  one workload 60 "$PY" $w --device $dev
  if command -v compute-sanitizer > /dev/null && [ "$DRY" != 1 ]; then
    # Options this compute-sanitizer knows (an unknown one would end a step at once).
    local help cs=(compute-sanitizer --error-exitcode 9) only=()
    help=$(compute-sanitizer --help 2>&1)
    grep -q -- '--print-limit' <<< "$help" && cs+=(--print-limit 50)
    grep -q -- '--kernel-name ' <<< "$help" && only=(--kernel-name kns=fastmine)
    echo "compute-sanitizer $(compute-sanitizer --version 2>&1 | grep -o 'Version [0-9.]*' | head -n 1)," \
      "options: ${cs[*]:1} ${only[*]}" >> "$log"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 one memcheck 100 "${cs[@]}" --tool memcheck "$PY" $w --no-coverage
    one racecheck 100 "${cs[@]}" --tool racecheck "${only[@]}" "$PY" $w --no-coverage
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 one initcheck 80 "${cs[@]}" --tool initcheck "${only[@]}" \
      "$PY" $w --no-coverage
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 one memcheck_large 90 "${cs[@]}" --tool memcheck "$PY" $w \
      --large --dtypes float32,bfloat16 --no-coverage
  else
    echo "compute-sanitizer: $([ "$DRY" = 1 ] && echo 'dry run, not run' || echo 'not found')" >> "$log"
  fi
}

if want sanitizers && enough 30; then
  stage "sanitizers started in the background (memcheck, racecheck, initcheck on scripts/gpu_sanitize.py)"
  # The chain may outlast the tests by 30 s at most, so the benchmarks keep their time.
  chain_end=$(( $(date +%s) + 240 )); last=$(( START + DEADLINE - MARGIN - 5 ))
  sanitize_chain $(( chain_end < last ? chain_end : last )) &
  SAN_PID=$!
fi
if want tests; then
  stage "tests: pytest -m cuda (the GPU run's selection), $WORKERS workers"
  if enough 30; then
    XDIST=(); "$PY" -c "import xdist" 2>/dev/null && XDIST=(-n "$WORKERS")
    TIMEOUT=(); "$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT=(--timeout=120 --timeout-method=thread)
    # One thread per worker: sixteen workers already fill the cores with the float64 oracles.
    # The derandomized hypothesis profile, so that a rerun after a fix meets the same cases.
    OMP_NUM_THREADS=1 HYPOTHESIS_PROFILE=ci timeout -k 10 "$(limit 210)" \
      "$PY" -m pytest -m cuda "${XDIST[@]}" "${TIMEOUT[@]}" -v -rfE --durations=15 \
      -p no:cacheprovider tests > "$WORK/tests_cuda.log" 2>&1
    rc=$?
    note "pytest rc=$rc$([ $rc -eq 124 ] && echo ' (stopped at its time limit)')"
    { grep -E "^(FAILED|ERROR) " "$WORK/tests_cuda.log" | head -n 40; tail -n 1 "$WORK/tests_cuda.log"; } \
      | tee -a "$SUMMARY"
    grep -cE " PASSED| FAILED| ERROR| SKIPPED" "$WORK/tests_cuda.log" \
      | sed 's/^/results logged (a cut-off run still lists these): /' | tee -a "$SUMMARY"
  fi
fi
if [ -n "$SAN_PID" ]; then
  stage "sanitizers (waiting for them)"
  wait "$SAN_PID"
  SAN_PID=
  tee -a "$SUMMARY" < "$WORK/sanitizers.txt"
fi

# ---- benchmarks ---------------------------------------------------------------------------
# bench TAG N ARGS...: one python -m benchmarks run into bench/TAG, its tables and target
# verdicts into benchmarks.txt and the summary. bf16 first where both run: each dtype's JSON
# is written as it finishes, so a run cut at its limit keeps the first.
BDEV=cuda; [ "$DRY" = 1 ] && BDEV=cpu
bench() {
  local tag=$1 n=$2; shift 2
  enough 25 || return
  if [ "$DRY" = 1 ]; then  # the same flags, on tiny CPU sizes
    local a=() skip=
    for x in "$@"; do
      if [ -n "$skip" ]; then a+=("$skip"); skip=; continue; fi
      case $x in --sizes) a+=(--sizes); skip=256x32;; *) a+=("$x");; esac
    done
    set -- "${a[@]}" --no-compile --repeats 3
  fi
  echo "## $tag: python -m benchmarks $*" >> "$WORK/benchmarks.txt"
  run_limited "$n" "$WORK/bench/$tag.log" "$PY" -m benchmarks --device $BDEV --out "$WORK/bench/$tag" "$@"
  local rc=$?
  grep -E '^\| |^- |^## |met|MISSED|INVALID' "$WORK/bench/$tag.log" >> "$WORK/benchmarks.txt"
  note "$tag: rc=$rc"
  grep -E 'MISSED|: met|out of memory' "$WORK/bench/$tag.log" | grep -v 'not measured' \
    | cut -c1-400 | tee -a "$SUMMARY"
  grep -A 6 'BENCHMARK INVALID' "$WORK/bench/$tag.log" | grep -v '!!!' | tee -a "$SUMMARY"
}
FAST=(--repeats 15 --warmup 3 --max-seconds 2 --no-compile)
if want bench_bh; then
  stage "benchmarks: batch-hard at B = 16384 against cuBLAS, B = 4096 against eager, PML, ST"
  bench batch_hard_16k 90 --op batch_hard --dtype bfloat16,float32 \
    --sizes 16384x128,16384x512,4096x128 "${FAST[@]}"
fi
if want bench_scale; then
  stage "benchmarks: B = 262144, D = 256 (peers out of memory; fastmine under 1 GiB)"
  SCALE=(--dtype "bfloat16,float32" --sizes 262144x256 --repeats 3 --warmup 1 --max-seconds 1 --no-compile)
  for op in batch_hard contrastive batch_all; do
    bench "${op}_262k" 70 --op $op "${SCALE[@]}"
  done
fi
if want bench_pairs; then
  stage "benchmarks: batch-all (within 3x of batch-hard), contrastive, semi-hard at B = 16384"
  for op in batch_all contrastive semi_hard; do
    bench "${op}_16k" 60 --op $op --dtype bfloat16,float32 --sizes 16384x128,16384x512 "${FAST[@]}"
  done
fi
if want bench_compile; then
  stage "benchmarks: batch-hard B = 4096 against torch.compile (compiles first: slow)"
  bench batch_hard_compile 90 --op batch_hard --dtype float32 --sizes 4096x128 \
    --repeats 15 --warmup 3 --max-seconds 2
fi

# ---- ncu -----------------------------------------------------------------------------------
if want ncu; then
  stage "ncu: speed of light of the batch-hard kernels and of X @ X.T (B = 16384)"
  if [ "$DRY" = 1 ] || ! command -v ncu > /dev/null; then
    note "ncu $([ "$DRY" = 1 ] && echo 'not run (dry run)' || echo 'not found')"
  elif enough 40; then
    run_limited 150 "$WORK/ncu/ncu.log" ncu --clock-control none --profile-from-start off \
      --section SpeedOfLight --section LaunchStats --section Occupancy --nvtx \
      --launch-count 60 -f -o "$WORK/ncu/batch_hard" \
      "$PY" scripts/ncu_batch_hard.py --sizes 16384x128,16384x512 --dtypes bfloat16,float32
    note "ncu rc=$?"
    if [ -f "$WORK/ncu/batch_hard.ncu-rep" ]; then
      timeout "$(limit 30)" ncu --import "$WORK/ncu/batch_hard.ncu-rep" --page details \
        > "$WORK/ncu/details.txt" 2>&1
      grep -E '^  [A-Za-z_].*\(|Duration|Compute \(SM\) Throughput|Memory Throughput' \
        "$WORK/ncu/details.txt" | head -n 80 | cut -c1-160 | tee -a "$SUMMARY"
    fi
  fi
fi
