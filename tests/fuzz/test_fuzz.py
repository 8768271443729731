"""Fuzzing: every corpus file replayed through its target (seeds and every crash found, kept as
regression cases), and a short coverage-guided atheris run of each target (a few seconds).

A long run by hand: `ops/fuzz TARGET --seconds 600` (new crashes are copied into
tests/fuzz/corpus/TARGET/ as crash-*, where this test replays them from then on).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402
import targets as T  # noqa: E402

BRIEF_S = int(os.environ.get("CARBON_LEDGER_FUZZ_SECONDS", "3"))

def _cases() -> list[pytest.param]:
    out = []
    for folder in sorted(p for p in T.CORPUS.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            name = f"{folder.name}/{path.name}"
            marks = [pytest.mark.xfail(strict=True, reason=T.KNOWN[name])] if name in T.KNOWN else []
            out.append(pytest.param(folder.name, path, id=name, marks=marks))
    return out


@pytest.mark.parametrize(("target", "path"), _cases())
def test_corpus_file_gets_the_documented_answer(target: str, path: Path) -> None:
    T.TARGETS[target](path.read_bytes())


def test_every_target_has_seeds_and_every_folder_a_target() -> None:
    folders = {p.name for p in T.CORPUS.iterdir() if p.is_dir()}
    assert folders == set(T.TARGETS)
    for name in T.TARGETS:
        assert any(p.name.startswith("seed-") for p in (T.CORPUS / name).iterdir()), name
    assert set(T.KNOWN) <= {f"{p.parent.name}/{p.name}" for p in T.CORPUS.glob("*/*")}


def test_the_seeds_are_valid_inputs() -> None:
    """The seeds are what the targets accept (so mutations start from the interesting side of
    every check), signed with the key the targets pin."""
    from pathlib import Path as P

    from ledger.audit import audit_export
    from ledger.proofs import verify_bundle
    from ledger.signing import parse_canonical

    for path in (T.CORPUS / "canonical").glob("seed-*"):
        parse_canonical(path.read_bytes())
    import json

    for path in (T.CORPUS / "proof_bundle").glob("seed-*"):
        assert verify_bundle(json.loads(path.read_bytes()), T.operator_public())["ok"]
    for path in (T.CORPUS / "export_file").glob("seed-*"):
        report = audit_export(P(path), T.operator_public(), workers=1)
        assert report.ok and report.records > 20 and report.checkpoints >= 1, report.failure


def test_the_targets_catch_what_they_are_for() -> None:
    """A target that cannot fail is no target: each flags an escape or a wrong answer."""
    with pytest.raises(T.Finding):
        T._refused_with(__import__("domain.errors").errors.DomainError("replay", "x"),
                        ("bad_signature",))
    with pytest.raises(TypeError):
        T._refused_with(TypeError("escaped"), ("invalid_argument",))
    T.canonical(b'{"a":1}')
    T.canonical(b'{"b":1,"a":2}')  # refused non_canonical: the documented answer
    T.export_file(b"not an export")  # refused invalid_argument
    T.proof_bundle(b'{"format": "carbon-ledger-proof/1"}')  # ProofError


atheris = pytest.importorskip("atheris")


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(T.TARGETS))
def test_a_short_fuzzing_run_finds_nothing_new(target: str, tmp_path: Path) -> None:
    """A few seconds of coverage-guided fuzzing from the corpus (the known holes left out, so
    that the run looks for new ones)."""
    result = R.fuzz(target, BRIEF_S, tmp_path, keep=False)
    assert result.ran, result.stderr[-2000:]
    if result.new:
        pytest.fail(f"fuzzing {target} found {result.new}; rerun with `ops/fuzz {target} "
                    f"--seconds 60`; stderr:\n{result.stderr[-2500:]}")
    if result.known_again:
        pytest.xfail(f"found a known hole again: {result.known_again}")


def test_a_damaged_export_found_by_fuzzing_is_refused_by_the_cli(tmp_path: Path) -> None:
    """ops/fuzz export_file found an export whose item kind is a list: verify-export died with
    a TypeError traceback; it is a damaged file, and gets a verdict (exit 1, the failure's
    position and sentence)."""
    import subprocess

    crash = T.CORPUS / "export_file" / "crash-34e98bfadfbe627e9541cd8db7b28bdcd2261783"
    cli = Path(sys.executable).parent / "carbon-ledger"
    done = subprocess.run([str(cli), "verify-export", str(crash), "--operator-key",
                           T.operator_public(), "--json"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, check=False)
    assert done.returncode == 1, done.stderr[-800:]
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False, report
    assert isinstance(report["failure"]["position"], int) and report["failure"]["what"], report


def test_verify_proof_refuses_deeply_nested_json(tmp_path: Path) -> None:
    """What the proof_bundle target skips (not JSON) the CLI must refuse with a sentence, not a
    traceback: a file of 100,000 nested arrays."""
    import subprocess

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000, encoding="ascii")
    cli = Path(sys.executable).parent / "carbon-ledger"
    done = subprocess.run([str(cli), "verify-proof", str(deep), "--operator-key",
                           T.operator_public()], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-600:]
    assert "proof rejected" in done.stderr
