"""Shared fixtures: the two builds, the default model and a short real text."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pysparsek.data import corpus, models
from pysparsek.llamacpp import build as builds


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


@pytest.fixture
def open_llm() -> Iterator[Callable[..., Any]]:
    """llm.load of exactly the settings given (exact=True unless told otherwise) for one test: every context it
    opened is closed at teardown, even when an assert failed."""
    from pysparsek.sparsek import llm

    opened: list[Any] = []

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("exact", True)
        m = llm.load(*args, **kwargs)
        opened.append(m)
        return m

    yield load
    for m in reversed(opened):
        m.close()
