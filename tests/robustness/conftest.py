"""Fixtures of the bad-input and fault suite; the checks themselves are in :mod:`support`."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import Reliability, copy_project, fake_checkpoints, make_project, run_data_stages


@pytest.fixture
def reliability(record_property) -> Reliability:
    """Records what a test tried (bad inputs, faults, bitwise comparisons) for docs/reliability.md."""
    return Reliability(record_property)


@pytest.fixture(scope="session")
def base_project(tmp_path_factory) -> Path:
    """A tiny project with the four data stages run and untrained checkpoints (read-only: copy it)."""
    root = make_project(tmp_path_factory.mktemp("robust") / "base")
    run_data_stages(root)
    fake_checkpoints(root)
    return root


@pytest.fixture
def project(base_project, tmp_path) -> Path:
    """A private copy of :func:`base_project` that a test may break."""
    return copy_project(base_project, tmp_path / "project")
