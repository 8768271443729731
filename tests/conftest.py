"""Shared fixtures: a fresh SQLite-file registry per test, and one loaded with the demo story."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import demo
from ledger.application import Registry
from ledger.keys import Keyring


def load_demo(app: Registry) -> None:
    demo.load(app)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def registry(db_url: str) -> Iterator[Registry]:
    app = Registry(db_url, keyring=Keyring())
    yield app
    app.close()


@pytest.fixture
def demo_registry(registry: Registry) -> Registry:
    load_demo(registry)
    return registry
