"""docs/commands.md's examples, run as the page says they were: with `carbon-ledger submit`, in
the page's order, against a registry that holds the demo story. Each outcome shown must be the
outcome the registry gives (but for public keys and key ids, which are random), each example
sent again must come back replayed at the same position, the refusal shown must be the one
printed, and the table after the examples must be what `carbon-ledger ticket` prints."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from api.cli import main
from ledger.keys import Keyring, public_text, signing_key_id

PAGE = Path(__file__).resolve().parents[2] / "docs" / "commands.md"
RANDOM = ("public_key", "new_public_key", "operator_key", "key_id", "old_key_id")


def blocks(text: str) -> list[tuple[int, str, str]]:
    """(line, language, body) of every fenced block, in order."""
    return [(text[:m.start()].count("\n") + 1, m.group(1), m.group(2))
            for m in re.finditer(r"^```(\w*)\n(.*?)^```\n", text, re.S | re.M)]


def as_json(body: str) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return None


def is_command(data: Any) -> bool:
    return isinstance(data, dict) and {"command", "actor", "command_id", "args"} <= set(data)


def without_random(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: without_random(v) for k, v in data.items() if k not in RANDOM}
    if isinstance(data, list):
        return [without_random(v) for v in data]
    return data


class Submitter:
    def __init__(self, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.folder, self.capsys = folder, capsys
        self.where = ["--db", f"sqlite:///{folder / 'registry.db'}", "--keys", str(folder / "keys")]
        self.keys = Keyring(folder / "keys")
        self.n = 0

    def cli(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([*argv, *self.where])
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def submit(self, command: dict[str, Any]) -> tuple[int, str, str]:
        self.n += 1
        path = self.folder / f"example-{self.n}.json"
        path.write_text(json.dumps(command, ensure_ascii=False), encoding="utf-8")
        return self.cli("submit", str(path))

    def with_own_key(self, command: dict[str, Any]) -> dict[str, Any]:
        """A public key shown on the page is someone's random key: put one of ours in its place."""
        args = dict(command["args"])
        if "public_key" in args:
            who = args.get("participant_id") or args.get("operator_id")
            args["public_key"] = public_text(self.keys.get_or_create(who))
        if command["command"] == "revoke_key":  # the key id of that participant's key here
            args["key_id"] = signing_key_id(self.keys.get(args["participant_id"]))
        return {**command, "args": args}


def test_the_command_examples_give_the_outcomes_shown(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    text = PAGE.read_text(encoding="utf-8")
    found = blocks(text)
    registry = Submitter(tmp_path / "demo", capsys)
    assert registry.cli("init", "--origin", "carbon-ledger.demo/sanming")[0] == 0
    assert registry.cli("demo")[0] == 0
    empty = Submitter(tmp_path / "empty", capsys)  # for `initialise`, which needs no genesis

    checked = 0
    last: tuple[int, dict[str, Any], Submitter] | None = None
    for i, (line, language, body) in enumerate(found):
        data = as_json(body)
        if is_command(data):
            target = empty if data["command"] == "initialise" else registry
            command = target.with_own_key(data)
            code, out, err = target.submit(command)
            following = found[i + 1] if i + 1 < len(found) else None
            if following and following[2].lstrip().startswith("$ carbon-ledger submit"):
                shown = following[2].strip().splitlines()
                assert code == 1, f"line {line}: the refusal shown was accepted: {out}"
                assert err.strip() == shown[1], f"line {line}: {err}"
                assert shown[2] == "exit 1"
                checked += 1
                continue
            assert code == 0, f"commands.md line {line}: {err}"
            outcome = json.loads(out)
            again = json.loads(target.submit(command)[1])
            assert (again["replayed"], again["position"]) == (True, outcome["position"]), line
            last = (line, outcome, target)
        elif language == "json" and isinstance(data, dict) and last is not None:
            shown_line, outcome, _ = last
            assert without_random(outcome) == without_random(data), (
                f"commands.md line {line}: the outcome shown differs from the real one "
                f"(command at line {shown_line}):\n{json.dumps(outcome, ensure_ascii=False)}")
            checked += 1
            last = None
    assert checked >= 25  # every command's example, and the refusal

    # "After the examples": the ticket's table, as printed.
    after = text.index("## After the examples")
    rest = [b for b in blocks(text[after:])]
    assert rest[0][1] == "sh" and rest[1][1] == "text", "a ```sh block, then its ```text output"
    argv = rest[0][2].strip().split()
    assert argv[0] == "carbon-ledger"
    code, out, err = registry.cli(*argv[1:])
    assert code == 0, err
    assert [x.rstrip() for x in out.strip().splitlines()] == \
        [x.rstrip() for x in rest[1][2].strip().splitlines()], out
