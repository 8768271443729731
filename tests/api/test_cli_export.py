"""`carbon-ledger verify-export` on files that are not sound exports: a verdict or a clear
error, never a traceback, and never exit 0."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest
from test_cli_audit import CLI, cli, demo_cli, demo_template  # noqa: F401 - fixtures

import api.cli


@pytest.fixture
def exported(demo_cli: CLI) -> tuple[CLI, Path, str]:  # noqa: F811
    file = demo_cli.folder / "audit.export"
    demo_cli.ok("export", str(file))
    return demo_cli, file, demo_cli.ok("operator-key").out.strip()


def with_a_checkpoint_twice(data: bytes) -> tuple[bytes, int]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    start = 0
    for item in unpacker:
        end = unpacker.tell()
        if isinstance(item, list) and item[0] == "c":
            return data[:end] + data[start:end] + data[end:], item[1]
        start = end
    raise AssertionError("the export holds no checkpoint")


def test_a_checkpoint_listed_twice_gets_a_verdict(exported: tuple[CLI, Path, str]) -> None:
    runner, file, key = exported
    data, size = with_a_checkpoint_twice(file.read_bytes())
    file.write_bytes(data)
    result = runner.raw("verify-export", str(file), "--operator-key", key)
    assert result.code == 1, result
    assert "Traceback" not in result.err and "verified" not in result.out
    err = " ".join(result.err.split())
    assert f"verification failed at position {size}: the export is damaged: the checkpoint at " \
           f"size {size} is listed twice" in err
    report = json.loads(runner.raw("verify-export", str(file), "--operator-key", key, "--json").out)
    assert report["ok"] is False and report["failure"]["position"] == size


@pytest.mark.parametrize("what", ["missing", "a folder", "a database", "a JSON file"])
def test_verify_export_of_what_is_no_export_is_a_clear_error(exported: tuple[CLI, Path, str],
                                                             what: str) -> None:
    runner, file, key = exported
    target = {"missing": runner.folder / "nothing.export", "a folder": runner.folder,
              "a database": runner.db_file, "a JSON file": runner.folder / "x.json"}[what]
    if what == "a JSON file":
        target.write_text('{"format": "carbon-ledger-export/1"}', encoding="utf-8")
    result = runner.raw("verify-export", str(target), "--operator-key", key)
    assert result.code == 1, result
    assert "Traceback" not in result.err and "verified" not in result.out
    err = " ".join(result.err.split())
    if what in ("missing", "a folder"):
        reason = "No such file or directory" if what == "missing" else "Is a directory"
        assert f"error invalid_argument: cannot read {target}: {reason}" in err
    else:
        assert "verification failed at position 1: the export is damaged:" in err
        assert "not a carbon-ledger export" in err


def test_an_audit_that_breaks_unexpectedly_gives_no_verdict_and_no_traceback(
        exported: tuple[CLI, Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    runner, file, key = exported

    def broken(*_: object, **__: object) -> None:
        raise KeyError(3)

    monkeypatch.setattr(api.cli, "audit_export", broken)
    result = runner.raw("verify-export", str(file), "--operator-key", key)
    assert result.code == 3, result
    assert "Traceback" not in result.err and "verified" not in result.out
    assert "audit_incomplete" in result.err and "KeyError" in result.err
