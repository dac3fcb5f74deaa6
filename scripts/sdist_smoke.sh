#!/usr/bin/env bash
# Installs an sdist the way a user with their own torch does, into a fresh virtual
# environment, and checks the installed package from outside the source tree (a run from a
# clone's root would import its uncompiled fastmine/ instead).
#
#   bash scripts/sdist_smoke.sh dist/fastmine-0.1.0.tar.gz
#
# TORCH (default torch==2.13.0) is the torch installed first (TORCH=system: the venv sees
# the torch already importable by PYTHON instead); PYTHON (default python3) makes the venv. FASTMINE_NO_CUDA defaults to 1 here: the in-tree build already proves that the
# CUDA module compiles and links, and the sdist's copy would add minutes.
set -euo pipefail
sdist=$(realpath "$1")
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export FASTMINE_NO_CUDA="${FASTMINE_NO_CUDA:-1}"
py="$work/venv/bin/python"

torch_req="${TORCH:-torch==2.13.0}"
if [ "$torch_req" = system ]; then
  "${PYTHON:-python3}" -m venv --system-site-packages "$work/venv"
else
  "${PYTHON:-python3}" -m venv "$work/venv"
  # torch alone first and then frozen, as the Makefile does; the log line says where it came
  # from (a local wheel file, or a download).
  "$py" -m pip install "$torch_req" numpy > "$work/torch.log"
  grep -E "^(Processing|Downloading) .*torch-" "$work/torch.log" | head -n 1 || true
fi
"$py" -c "import torch; print('torch==' + torch.__version__)" > "$work/constraints.txt"
"$py" -m pip install --quiet -c "$work/constraints.txt" numpy setuptools wheel ninja
"$py" -m pip install --quiet --no-build-isolation -c "$work/constraints.txt" "$sdist"

cd "$work"  # outside the source tree
"$py" - "$root" <<'PY'
import importlib.metadata
import os
import sys

import torch

import fastmine
from fastmine import reference

root = os.path.realpath(sys.argv[1])
where = os.path.realpath(os.path.dirname(fastmine.__file__))
assert not where.startswith(root + os.sep), f"imported the source tree {where}, not the install"
assert "site-packages" in where, where
meta = importlib.metadata.version("fastmine")
assert meta == fastmine.__version__, (meta, fastmine.__version__)

x = torch.randn(16, 8, dtype=torch.float64, requires_grad=True)
y = torch.arange(4).repeat_interleave(4)
loss = fastmine.batch_hard_triplet_loss(x, y, margin=0.5)
loss.backward()
want = reference.batch_hard_triplet_loss(x.detach(), y, margin=0.5)
assert torch.allclose(loss.detach(), want), (loss, want)
assert os.path.isfile(os.path.join(where, "_build_info.json")), "no build record installed"
print(f"fastmine {fastmine.__version__} from {where}: import, loss, gradient ok")
PY
"$py" -m fastmine.info | head -n 8
