"""python -m fastmine.info: the facts a bug report needs, as text and as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import fastmine
from fastmine import info

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "fastmine.info", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_text_report_names_versions_devices_build_and_tf32():
    out = _run()
    for needle in (
        f"fastmine:         {fastmine.__version__}",
        f"torch:            {torch.__version__}",
        "GPU visible:      " + ("yes" if torch.cuda.is_available() else "no"),
        "TF32:             torch.backends.cuda.matmul.allow_tf32=",
        "-march:",
        "CPU module:",
        "CUDA module:",
        "kernels (op: devices with a kernel in this process):",
    ):
        assert needle in out, f"{needle!r} missing from:\n{out}"
    # Every registered op is listed with the devices it has a kernel for.
    assert any(
        line.split() == ["batch_hard_triplet", "cpu" + (", cuda" if fastmine.CUDA_AVAILABLE else "")]
        or line.split() == ["batch_hard_triplet", "cpu,", "cuda"]
        for line in out.splitlines()
    ), out


def test_json_report_matches_this_process():
    data = json.loads(_run("--json"))
    assert data["fastmine"]["version"] == fastmine.__version__
    assert data["torch"]["version"] == torch.__version__
    assert data["gpu_visible"] == torch.cuda.is_available()
    ops = info.kernels()
    assert data["kernels"] == ops
    assert "batch_hard_triplet" in ops and "cpu" in ops["batch_hard_triplet"]
    assert all(devs for devs in ops.values()), "an op with no kernel on any device"


def test_build_record_has_the_flags(tmp_path, monkeypatch):
    build = info.collect()["fastmine"]["build"]
    assert build is not None, "fastmine/_build_info.json missing: setup.py build_ext writes it"
    assert build["modules"][0] == "fastmine._C"
    assert build["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert build["march"] in (None, "native")
    if build["cuda"] is not None:
        assert build["cuda"]["stable_abi_target"].startswith("0x")
        assert build["cuda"]["arch_list"]
    text = info.render(info.collect())
    assert ("-march:           native" in text) == (build["march"] == "native")
    # A tree built before the record existed says so instead of failing.
    monkeypatch.setattr(info, "BUILD_INFO", str(tmp_path / "absent.json"))
    assert "not recorded" in info.render(info.collect())


def test_tf32_line_follows_the_flag():
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert "fastmine's float32 tiles on CUDA use TF32 tensor cores" in info.render(info.collect())
        torch.backends.cuda.matmul.allow_tf32 = False
        assert "fastmine's float32 tiles on CUDA use full fp32" in info.render(info.collect())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
