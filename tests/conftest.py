"""Shared pytest configuration: hypothesis profiles, the ``cuda`` marker, device fixtures,
and the import path of the shared helpers.

The tests are grouped in folders by what they test (ops/, properties/, cuda/, peers/,
integration/, build_system/); the modules they share (helpers, strategies, op_table, ...) live in
support/, which is put on sys.path here so that every folder imports them by plain name.

Hypothesis profiles (select with HYPOTHESIS_PROFILE=...):
  default  modest example counts so the whole suite runs in a few minutes on 2 CPU cores
  ci       the same counts, derandomized (reproducible CI runs)
  thorough many more examples, for a long local soak
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("default", max_examples=40, **_COMMON)
settings.register_profile("ci", max_examples=40, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=500, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

HAS_CUDA = torch.cuda.is_available()


def pytest_configure(config):
    # `pytest -m cuda` is the GPU run's selection: every test whose outcome can depend on
    # a GPU. gpu_optional=True marks the few that exercise CUDA where it exists (the built
    # CUDA module, a second device) but have a stand-in without it, so they still run here.
    config.addinivalue_line(
        "markers", "cuda(gpu_optional=False): exercises CUDA; skipped without a GPU unless gpu_optional=True"
    )
    config.addinivalue_line("markers", "slow: slow test (torch.compile, large shapes)")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="no CUDA GPU available (torch.cuda.is_available() is False)")
    for item in items:
        mark = item.get_closest_marker("cuda")
        if mark is not None and not mark.kwargs.get("gpu_optional", False):
            item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Every device fastmine runs on here: cpu always, cuda where a GPU exists (the cuda
    case carries the ``cuda`` marker, so it is skipped without a GPU and selected by
    ``pytest -m cuda``). properties/test_contract.py runs the table of public ops over it."""
    return torch.device(request.param)
