"""Shared fixtures: where the real data in ../shared/data is, and skipping cleanly where it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MINING_MAPPER_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, skipping the calling test (with the reason) when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (it lives in ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> str:
    """The synthetic run's stand-in Keras model (tests/support/synthetic_run.py), built once per test process."""
    from tests.support.synthetic_run import stand_in_model

    return stand_in_model(str(tmp_path_factory.mktemp("model") / "stand_in.keras"))
