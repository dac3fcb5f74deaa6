# fastmine: `make bench` and `make test` set everything up from a fresh clone.
#
#   make test                      venv + pinned CPU torch + deps, lint, format check, type check,
#                                  build, run the test suite
#   make bench                     same set-up, build, time every op once (~2 min on 2 cores);
#                                  results in bench_out/ (ignored), never benchmarks/results/
#   make build                     (re)build the compiled modules in place (incremental)
#   make sanitize                  the CPU module with ASan + UBSan in build-sanitize/, then
#                                  the raw-op contract and oracle-parity tests against it
#   make lint / make typecheck     ruff check / mypy on the typed package (both in make test)
#   make format / make format-check  ruff format + clang-format over csrc/ (check: change nothing;
#                                  in make test)
#   make sdist-check               build the sdist, install it into a fresh venv, smoke-test it
#   make TORCH=system test         use the torch already importable by $(PYTHON) (e.g. your
#                                  own CUDA build) instead of installing the pinned one
#   make TORCH="torch==2.11.0" ... another pinned torch
#   make BENCH_ARGS="--sweep" bench arguments for python -m benchmarks (see --help): --sweep
#                                  the committed results' sizes, --full the report grid

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BENCH_ARGS ?=
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-stamp
INSTALLED := $(VENV)/.install-stamp

.PHONY: all setup build test bench sanitize clean lint typecheck format format-check sdist sdist-check

all: test

# The pinned torch goes in first and alone, then is frozen by a constraints file so no
# later requirement can pull a different (multi-GB CUDA) torch.
$(DEPS): requirements-dev.txt Makefile
ifeq ($(TORCH),system)
	$(PYTHON) -m venv --system-site-packages $(VENV)
else
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
endif
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt -r requirements-dev.txt
	touch $@

setup: $(DEPS)

# An in-place, incremental build (ninja recompiles only what changed), without build
# isolation. The venv finds the source tree through a .pth file, like an editable install
# but with no second, throw-away compile. Where nvcc exists the CUDA module must build: a
# failure fails this target (and so `make test`).
$(INSTALLED): $(DEPS)
	$(PY) -c "import site; open(site.getsitepackages()[0] + '/fastmine-src.pth', 'w').write('$(CURDIR)\\n')"
	touch $@

build: $(INSTALLED)
	$(PY) setup.py --quiet build_ext --inplace

test: lint format-check typecheck build
	$(PY) -m pytest -q tests

# Any sanitizer report fails it (scripts/sanitize.sh says how).
sanitize: $(DEPS)
	PY=$(PY) bash scripts/sanitize.sh

lint: $(DEPS)
	$(VENV)/bin/ruff check .

typecheck: $(DEPS)
	$(VENV)/bin/mypy

CSRC = $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

format: $(DEPS)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CSRC)

format-check: $(DEPS)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CSRC)

# What a user with their own torch installs: an sdist, built without isolation (which would
# download a second torch), then installed into a fresh venv and checked from outside the tree.
sdist: $(DEPS)
	rm -rf dist
	$(PY) -m build --sdist --no-isolation --outdir dist .

sdist-check: sdist
	PYTHON=$(PYTHON) TORCH="$(TORCH)" bash scripts/sdist_smoke.sh dist/fastmine-*.tar.gz

# Without a visible GPU the benchmark never loads the CUDA module: skip its minutes-long
# compile (make build and make test still build it).
bench: $(INSTALLED)
	FASTMINE_NO_CUDA=$$($(PY) -c "import torch; print(int(not torch.cuda.is_available()))") \
		$(PY) setup.py --quiet build_ext --inplace
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf build build-sanitize dist fastmine/*.so fastmine/_build_info.json *.egg-info
