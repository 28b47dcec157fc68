"""Shared fixtures: the two builds, the default model and a short real text."""

from __future__ import annotations

from pathlib import Path

import pytest

from pysparsek import build as builds
from pysparsek import corpus, models


@pytest.fixture(scope="session")
def stock_build() -> builds.Build:
    return builds.require("stock")


@pytest.fixture(scope="session")
def patched_build() -> builds.Build:
    return builds.require("patched")


@pytest.fixture(scope="session")
def model() -> Path:
    return models.default_model()


@pytest.fixture(scope="session")
def short_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~60 KB of the real prose corpus: enough for a few chunks at small contexts."""
    text = corpus.default_text().read_text(encoding="utf-8")[:60_000]
    path = tmp_path_factory.mktemp("text") / "jargon-head.txt"
    path.write_text(text, encoding="utf-8")
    return path
