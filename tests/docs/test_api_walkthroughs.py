"""docs/api.md's Python examples, run as the page says: in the page's order, in one Python
session at the root of a checkout, against the server of a fresh `ops/demo` (really started,
on a free loopback port). What each example prints must be the ```text block shown under it,
but for what the page says is random or clock-dependent (key ids, nonces, signatures, times)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "api.md"
START_TIMEOUT_S = 180

# What differs from run to run, each put as one mark on both sides before comparing.
RANDOM = [
    (re.compile(r"\b[0-9a-f]{32}\b"), "<key id>"),
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?"), "<time>"),
    (re.compile(r"(created=|'created': |\"created\": )\d{10}"), r"\1<time>"),
    (re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}"), "<base64>"),  # signatures, keys, roots
    (re.compile(r"nonce=\"[^\"]+\""), 'nonce="<nonce>"'),
]


def normalised(text: str) -> list[str]:
    for pattern, mark in RANDOM:
        text = pattern.sub(mark, text)
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def examples() -> list[tuple[int, str, str | None]]:
    """(line, code, output shown) of every ```python block, in order."""
    text = PAGE.read_text(encoding="utf-8")
    found = []
    for m in re.finditer(r"^```python\n(.*?)^```\n", text, re.S | re.M):
        shown = re.match(r"\s*```text\n(.*?)^```", text[m.end():], re.S | re.M)
        found.append((text[:m.start()].count("\n") + 1, m.group(1),
                      shown.group(1) if shown else None))
    return found


def test_the_python_examples_print_what_the_page_shows(
        served_demo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = served_demo.folder.parent.parent, served_demo.base_url
    monkeypatch.chdir(root)  # "at the repository's root": var/demo/ is the demo's
    found = examples()
    assert len(found) >= 10
    session: dict[str, object] = {"__name__": "api_md_session"}
    compared = 0
    for line, code, shown in found:
        code = code.replace("http://127.0.0.1:8000", base)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"docs/api.md:{line}", "exec"), session)  # noqa: S102
        if shown is not None:
            assert normalised(printed.getvalue()) == normalised(shown), (
                f"docs/api.md:{line}: printed\n{printed.getvalue()}")
            compared += 1
    assert compared >= 10
