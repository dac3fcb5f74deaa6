#!/usr/bin/env bash
# One call on a lent GPU machine (torch preinstalled, no network): build the extension,
# check that the tensor-core instructions are in the binary, run every test that touches
# CUDA, then the GPU benchmarks (fp32 targets, a bf16 subset, the B = 65536 rows).
# Usage there:  bash scripts/gpu_check.sh      (device tool: timeout_s=600)
#
# The whole script keeps to DEADLINE seconds (default 540: under the tool's 600-second call
# limit, so the archive below is always written): each stage's time limit is its own or
# what is left, whichever is smaller, and a stage with under 20 s left is skipped. The
# device budget of a session is small (15 minutes, machine start included): one call of
# this script, then give the machine back.
#
# Results: $OUT/summary.txt (the tail of everything) and $OUT/gpu_check.tar.gz (logs, the
# benchmark JSON and plots per run: bench_fp32/, bench_bf16/, bench_64k/): the device tool
# brings back at most 8 files, so everything else travels in the archive. Unpack it into
# benchmarks/results/ to commit the numbers.
#
# Pure-Python test peers missing there (pytorch-metric-learning) travel as wheels in .whl/
# (see the device tool's README); they are installed to /tmp/site when present.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1
START=$(date +%s)
DEADLINE=${DEADLINE:-540}
elapsed() { echo $(( $(date +%s) - START )); }
# limit N: N, or the seconds left before the deadline (less a margin for packing), if fewer
limit() { local left=$(( DEADLINE - $(elapsed) - 15 )); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
# enough N: whether a stage still has N seconds to run
enough() { [ "$(limit 100000)" -ge "$1" ] || { echo "skipped: under $1 s left" | tee -a "$WORK/summary.txt"; return 1; }; }
stage() { echo; echo "=== [$(elapsed) s] $*" | tee -a "$WORK/summary.txt"; }
finish() {
  stage "done"
  tar czf "$OUT/gpu_check.tar.gz" -C "$WORK" . 2>/dev/null
  cp "$WORK/summary.txt" "$OUT/summary.txt"
}
trap finish EXIT

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; } \
  > "$WORK/env.txt" 2>&1

stage "build (CUDA module required)"
MAX_JOBS=16 FASTMINE_REQUIRE_CUDA=1 timeout "$(limit 240)" \
  python3 -m pip install --no-build-isolation --no-deps -e . > "$WORK/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc" | tee -a "$WORK/summary.txt"
tail -n 5 "$WORK/build.log"
[ $build_rc -eq 0 ] || exit $build_rc

stage "tensor-core instructions in the CUDA module (HMMA: mma.sync; FFMA: SIMT)"
SO=$(ls fastmine/_C_cuda*.so 2>/dev/null | head -n 1)
if command -v cuobjdump > /dev/null && [ -n "$SO" ]; then
  cuobjdump -sass "$SO" > "$WORK/sass.txt" 2>&1
  for arch in sm_80 sm_90; do
    echo "$arch: HMMA $(cuobjdump -sass -arch $arch "$SO" 2>/dev/null | grep -c HMMA)," \
      "local memory LDL/STL $(cuobjdump -sass -arch $arch "$SO" 2>/dev/null | grep -c 'LDL\|STL')" \
      | tee -a "$WORK/summary.txt"
  done
else
  echo "cuobjdump not found: SASS not checked" | tee -a "$WORK/summary.txt"
fi

stage "every test that touches CUDA (the CPU-only rest runs in CI)"
enough 20 && timeout "$(limit 220)" python3 -m pytest -q --maxfail=25 tests/test_cuda*.py \
  tests/test_large_batch.py tests/test_autocast.py tests/test_tf32_flag.py \
  tests/test_semi_hard_ops.py tests/test_errors.py tests/test_build.py 2>&1 \
  | tee "$WORK/tests_cuda.log" | tail -n 25 | tee -a "$WORK/summary.txt"

stage "benchmarks: fp32 at the issue's target sizes (with torch.compile)"
enough 30 && timeout "$(limit 140)" python3 -m benchmarks --device cuda --dtype float32 \
  --sizes 1024x128,4096x128,4096x512 --max-seconds 4 --out "$WORK/bench_fp32" 2>&1 \
  | tee "$WORK/bench_fp32.log" | grep -E '^\| |met|MISSED|INVALID' | tee -a "$WORK/summary.txt"

stage "benchmarks: bf16 subset (tensor cores; no torch.compile, to fit the call)"
enough 30 && timeout "$(limit 70)" python3 -m benchmarks --device cuda --dtype bfloat16 \
  --sizes 4096x128,4096x512,16384x512 --no-compile --repeats 20 --max-seconds 3 \
  --out "$WORK/bench_bf16" 2>&1 | tee "$WORK/bench_bf16.log" \
  | grep -E '^\| |met|MISSED|INVALID' | tee -a "$WORK/summary.txt"

stage "benchmarks: B = 65536 (peers out of memory is a result)"
enough 30 && timeout "$(limit 90)" python3 -m benchmarks --device cuda --dtype float32,bfloat16 \
  --sizes 65536x256 --no-compile --repeats 5 --warmup 1 --max-seconds 3 \
  --out "$WORK/bench_64k" 2>&1 | tee "$WORK/bench_64k.log" \
  | grep -E '^\| |INVALID' | tee -a "$WORK/summary.txt"
