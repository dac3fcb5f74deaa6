#!/usr/bin/env bash
# `make sanitize`: the CPU module built with AddressSanitizer + UndefinedBehaviorSanitizer
# into build-sanitize/ (the normal in-place build is left alone), then the raw-op contract
# tests and the oracle-parity tests at their small sizes run against it. Any sanitizer
# report is fatal: ASan aborts the process that hit it and UBSan halts, so the run fails
# (a report inside a contract case's worker process fails that case).
#
#   make sanitize                      everything below
#   SANITIZE_TESTS="tests/ops/test_x.py"   another selection (paths relative to the repo;
#                                          pytest node ids like file.py::test_name work too)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-.venv/bin/python}
# An absolute path, but not through the venv's symlink (that would leave the venv).
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
OUT="$ROOT/build-sanitize"
TESTS=${SANITIZE_TESTS:-"tests/build_system/test_op_contracts.py tests/ops/test_pairwise.py tests/ops/test_batch_hard.py \
tests/ops/test_batch_all.py tests/ops/test_contrastive.py tests/ops/test_semi_hard.py \
tests/ops/test_semi_hard_ops.py tests/ops/test_miners.py tests/ops/test_centroid.py tests/ops/test_focal.py \
tests/properties/test_gradients.py tests/properties/test_nan.py \
tests/properties/test_contract.py::test_matches_oracle tests/properties/test_contract.py::test_empty_batch \
tests/properties/test_contract.py::test_bad_input_names_the_argument \
tests/properties/test_contract.py::test_double_backward_is_refused \
tests/properties/test_contract.py::test_non_finite_input_never_gives_a_finite_loss"}

FASTMINE_NO_CUDA=1 FASTMINE_SANITIZE=1 "$PY" setup.py --quiet build_ext \
  --build-temp "$OUT/temp" --build-lib "$OUT/lib"

# A copy of the package beside the sanitized module; the tests import it from there (the
# working directory comes first on sys.path, so the source tree's unsanitized module is
# never picked up).
rm -rf "$OUT/pkg"
mkdir -p "$OUT/pkg"
cp -r fastmine "$OUT/pkg/"
find "$OUT/pkg" -name '*.so' -delete
find "$OUT/pkg" -name __pycache__ -type d -prune -exec rm -rf {} +
cp "$OUT"/lib/fastmine/_C*.so "$OUT/pkg/fastmine/"

# Python and torch are not instrumented: the sanitizer runtimes must be loaded first.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
# Leak checking is off: the interpreter and torch keep allocations until exit by design.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export FASTMINE_SANITIZED=1
cd "$OUT/pkg"
args=()
for t in $TESTS; do args+=("$ROOT/$t"); done
"$PY" -c "import fastmine, sys; assert fastmine.__file__.startswith('$OUT/pkg'), fastmine.__file__"
exec "$PY" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" -m "not slow" "${args[@]}"
