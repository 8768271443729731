"""The command line in a REAL pseudo-terminal (pexpect), at 80 and at 120 columns.

Rich draws progress bars and tables only when its stream is a terminal, so a test that pipes the
output never runs that code: these spawn the installed `carbon-ledger` (and `ops/demo`) on a pty
of a given size and read what a person at that terminal would see.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from rich.cells import cell_len

from ledger import demo

REPO = Path(__file__).resolve().parents[2]
CARBON_LEDGER = Path(sys.executable).parent / "carbon-ledger"  # the venv's console script
WIDTHS = (80, 120)
TIMEOUT_S = 120
# CSI sequences (colours, cursor moves, erase) and OSC sequences (titles, links).
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]")


def terminal_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CARBON_LEDGER_DB", "CARBON_LEDGER_KEYS", "COLUMNS", "LINES", "NO_COLOR")}
    env.update(TERM="xterm-256color", PYTHONUNBUFFERED="1", **extra)
    return env


def screen_lines(raw: str) -> list[str]:
    """The lines as written, without escape sequences; a line redrawn after a carriage return
    keeps only its last drawing (what stays on the screen)."""
    lines = []
    for line in ANSI.sub("", raw).replace("\r\n", "\n").split("\n"):
        lines.append(line.rsplit("\r", 1)[-1].rstrip())
    return lines


class Run:
    def __init__(self, status: int, raw: str) -> None:
        self.status = status
        self.raw = raw
        self.lines = screen_lines(raw)

    @property
    def final_line(self) -> str:
        return [line for line in self.lines if line.strip()][-1]

    def text_after(self, marker: str) -> str:
        """What follows the last line starting with `marker`, as one line: the terminal's width
        makes rich wrap a sentence between words, so its lines join with a space."""
        starts = [i for i, line in enumerate(self.lines) if line.startswith(marker)]
        assert starts, f"no line starts with {marker!r}:\n{self.raw}"
        return " ".join(line.strip() for line in self.lines[starts[-1] + 1:] if line.strip())

    def fits(self, width: int) -> bool:
        return all(cell_len(line) <= width for line in self.lines)


def in_terminal(argv: list[str], width: int, cwd: Path, **env: str) -> Run:
    child = pexpect.spawn(argv[0], argv[1:], cwd=str(cwd), env=terminal_env(**env),
                          dimensions=(40, width), encoding="utf-8", timeout=TIMEOUT_S)
    try:
        child.expect(pexpect.EOF)
        raw = child.before or ""
    finally:
        child.close()
    assert child.exitstatus is not None, f"killed by signal {child.signalstatus}:\n{raw}"
    return Run(child.exitstatus, raw)


def cli(*args: str) -> list[str]:
    return [str(CARBON_LEDGER), *args]


def piped(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd,
                          env=terminal_env(), check=False)


@pytest.fixture(scope="module")
def small_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """(folder, db url, operator key) of a registry holding the demo story."""
    folder = tmp_path_factory.mktemp("terminal")
    db = f"sqlite:///{folder / 'registry.db'}"
    for args in (("init", "--origin", "carbon-ledger.test/terminal"), ("demo", "--json")):
        done = piped(*args, "--db", db, cwd=folder)
        assert done.returncode == 0, done.stderr
    key = piped("operator-key", "--db", db, cwd=folder)
    assert key.returncode == 0, key.stderr
    yield folder, db, key.stdout.strip()


def long_commands(folder: Path, db: str, key: str, width: int) -> dict[str, tuple[list[str], str]]:
    """Each long command, and a pattern its last lines on the screen must match (an audit's
    verdict is followed by the rules editions it decided with)."""
    export_file = folder / f"audit-{width}.export"
    target = f"sqlite:///{folder / f'migrated-{width}.db'}"
    return {
        "verify": (["verify", "--db", db], r"verified: \d+ records, \d+ commands, .* root \S+"
                   r" rules: edition 2 from position \d+"),
        "rebuild": (["rebuild", "--db", db], r"rebuilt projections from \d+ events in .* pledges"),
        "export": (["export", str(export_file), "--db", db],
                   rf"exported \d+ records to .*audit-{width}\.export \([\d,]+ bytes\)"),
        "verify-export": (["verify-export", str(export_file), "--operator-key", key],
                          r"verified: \d+ records, .* root \S+ rules: edition 2 from position \d+"),
        "migrate": (["migrate", "--from", db, "--to", target],
                    r"copied \d+ records, \d+ checkpoints and \d+ cosignatures from .* on both"),
    }


# The order matters within a width: verify-export reads the file export wrote.
COMMANDS = ("verify", "rebuild", "export", "verify-export", "migrate")


@pytest.mark.parametrize("width", WIDTHS)
def test_long_commands_show_a_progress_bar_in_a_terminal_and_finish(
        small_registry: tuple[Path, str, str], width: int) -> None:
    folder, db, key = small_registry
    commands = long_commands(folder, db, key, width)
    labels = {"verify": "verifying", "rebuild": "rebuilding projections", "export": "exporting",
              "verify-export": "verifying export", "migrate": "migrating"}
    for name in COMMANDS:
        argv, final = commands[name]
        run = in_terminal(cli(*argv), width, folder)
        assert run.status == 0, f"{name} at {width} columns:\n{run.raw}"
        assert "Traceback" not in run.raw, run.raw
        bar = [line for line in run.lines if line.startswith(labels[name]) and "100%" in line]
        assert bar, f"{name}: no finished progress bar at {width} columns:\n{run.raw}"
        assert re.fullmatch(final, run.text_after(labels[name])), (name, run.raw)
        assert run.fits(width), (name, run.lines)


def test_long_commands_are_quiet_when_piped(small_registry: tuple[Path, str, str],
                                            tmp_path: Path) -> None:
    folder, db, key = small_registry
    commands = long_commands(tmp_path, db, key, 0)
    for name in COMMANDS:
        argv, final = commands[name]
        done = piped(*argv, cwd=folder)
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", (name, done.stderr)
        lines = done.stdout.strip().splitlines()
        assert any(re.fullmatch(final, " ".join(lines[-n:])) for n in (1, 2)), (name, done.stdout)



@pytest.mark.parametrize("width", WIDTHS)
def test_ops_demo_tells_its_story_within_the_terminal(tmp_path: Path, width: int,
                                                     request: pytest.FixtureRequest) -> None:
    """`ops/demo --no-serve` as a person runs it: the story in sentences, the figures, the audit
    and the lines to paste, every line within the terminal's width and no id cut short."""
    # A short folder, as a checkout's var/demo/ is: the pasted lines hold its path whole.
    folder = Path(tempfile.mkdtemp(prefix="demo-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    run = in_terminal([str(REPO / "ops" / "demo"), "--no-serve"], width, tmp_path,
                      CARBON_LEDGER_DEMO_DIR=str(folder))
    assert run.status == 0, run.raw
    assert "Traceback" not in run.raw
    assert run.final_line == "  carbon-ledger balances jinsen-carbon"
    assert run.fits(width), [line for line in run.lines if cell_len(line) > width]
    assert "…" not in run.raw  # rich's mark of a cell it had to cut
    text = " ".join(" ".join(run.lines).split())
    for expected in ("签发 Issuance", "质押 Pledge", "保险 Insurance", "履约 Compliance",
                     "2022-03: a fire destroys 500 t;",
                     "it pays ¥5,000.00 to 兴业银行三明分行 (pledgee of PL-2021-001).",
                     f"{len(list(demo.story())) - 1} commands, 1 refused as the story expects",
                     "issued 9,000 t = 183 available + 7,794 pledged + 523 retired + 500 cancelled",
                     "reversal:CLM-2022-001", "verifying", "proven as of checkpoint",
                     f"export CARBON_LEDGER_DB=sqlite:///{folder}/registry.db"):
        assert expected in text, expected
