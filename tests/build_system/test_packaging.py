"""What a user who installs fastmine like any extension meets: an sdist holding the sources
both modules build from, one version in code and metadata, and an import error that says
when the uncompiled source tree shadows an installed fastmine."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

import fastmine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), ROOT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = glob.glob(str(out / "fastmine-*.tar.gz"))
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}, path


def test_sdist_version_is_the_package_version(sdist):
    members, path = sdist
    with tarfile.open(path) as tar:
        info = tar.extractfile(f"fastmine-{fastmine.__version__}/PKG-INFO").read().decode()
    assert f"\nVersion: {fastmine.__version__}\n" in info


def test_sdist_holds_every_source_the_build_needs_and_no_build_output(sdist):
    members, _ = sdist
    sources = [
        os.path.relpath(p, ROOT)
        for ext in ("cpp", "h", "cu", "cuh")
        for p in glob.glob(os.path.join(ROOT, "csrc", "**", f"*.{ext}"), recursive=True)
    ]
    assert sources and not [s for s in sources if s not in members], "sources missing from the sdist"
    for name in (
        "setup.py",
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "fastmine/py.typed",
        "fastmine/contrib/sentence_transformers.py",
        "fastmine/_version.py",
    ):
        assert name in members, name
    assert not [m for m in members if m.endswith((".so", ".pyd", ".o")) or m.endswith("_build_info.json")]


def _source_tree_copy(tmp_path):
    src = tmp_path / "clone"
    shutil.copytree(
        os.path.join(ROOT, "fastmine"),
        src / "fastmine",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "_build_info.json"),
    )
    shutil.copy(os.path.join(ROOT, "setup.py"), src / "setup.py")
    return src


def _import_error(cwd, extra_path=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if extra_path:
        env["PYTHONPATH"] = str(extra_path)
    proc = subprocess.run(
        [sys.executable, "-c", "import fastmine"], capture_output=True, text=True, cwd=str(cwd), env=env, timeout=300
    )
    assert proc.returncode != 0, "importing an uncompiled tree must fail"
    assert "ImportError" in proc.stderr, proc.stderr
    return proc.stderr


def test_importing_the_uncompiled_source_tree_says_so(tmp_path):
    src = _source_tree_copy(tmp_path)
    err = _import_error(src)
    assert "uncompiled source tree" in err and str(src) in err, err
    assert "make build" in err, err


def test_the_error_names_the_installed_copy_that_the_tree_shadows(tmp_path):
    src = _source_tree_copy(tmp_path)
    site = tmp_path / "site" / "fastmine"
    site.mkdir(parents=True)
    (site / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")  # only its presence is read
    err = _import_error(src, extra_path=tmp_path / "site")
    assert f"shadows the installed fastmine at {site}" in err, err
    assert "run from another directory" in err, err


def test_an_installed_copy_without_its_module_says_reinstall(tmp_path):
    src = _source_tree_copy(tmp_path)
    os.remove(src / "setup.py")  # an installed package has no setup.py beside it
    err = _import_error(src)
    assert "reinstall fastmine" in err and "source tree" not in err, err
