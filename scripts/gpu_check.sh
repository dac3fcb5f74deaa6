#!/usr/bin/env bash
# One call on a lent GPU machine (torch preinstalled, no network): build the extension,
# run the whole test suite (CUDA tests included) and the GPU benchmarks, and leave the logs
# and results under $OUT. Usage there:  bash scripts/gpu_check.sh
# Pure-Python test peers missing there (pytorch-metric-learning) travel as wheels in .whl/
# (see the device tool's README); they are installed to /tmp/site when present.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; } > "$OUT/env.txt" 2>&1

# Build: the CUDA module is required here, so a missing nvcc is an error, not a skip.
FASTMINE_REQUIRE_CUDA=1 python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc"
tail -n 5 "$OUT/build.log"
[ $build_rc -eq 0 ] || exit $build_rc

python3 -m pytest -q -x tests 2>&1 | tee "$OUT/tests.log" | tail -n 40
python3 -m benchmarks --device cuda --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -n 60
