"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    """The public corpora in ``../shared/corpus`` (never copied into the repo).

    Skips the test when the folder is absent, except under ``CI=true``, where that is a failure
    (so CI can never pass by skipping).
    """
    if not SHARED_CORPUS.is_dir():
        reason = f"shared corpus folder not found: {SHARED_CORPUS} (public data kept next to the repo)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + "; CI=true requires it")
        pytest.skip(reason)
    return SHARED_CORPUS
