"""Every shell example of README.md and docs/*.md that runs `carbon-ledger` is run here, so the
docs stay true (issue 17, item 13).

Each ```sh block is one bash script (`set -euo pipefail`), run in a folder of its own:
  * a block that starts a registry (`carbon-ledger init`) runs in an empty folder;
  * a block that reads the demo's registry after `ops/demo` (`var/demo/registry.db`) runs in a
    folder laid out like a checkout after `ops/demo`, without the venv on PATH;
  * any other block runs where `var/registry.db` (the default `--db`) holds the demo story.
Where a page names a place that cannot exist here (a production host, `/srv/...`, a key to paste
in), SUBSTITUTIONS puts a real one of this test in its stead: a PostgreSQL schema of the test
session's database, a server really started on a free loopback port, the operator's key. A
`carbon-ledger serve` line starts the server, waits until it answers /healthz, and stops it.
When a ```text block follows the example, the example's output must be that text: its
standard output, or, when the text is a refusal (`error <code>: …`), its standard error and exit
status 1; run-to-run values (random command-id suffixes, key ids, public keys, times) are masked
on both sides. The blocks of a page that show output form the page's session: they run in the
page's order in one folder, each seeing what the ones before it did (as such pages say they
were run), and a ```text block introduced by "With `FILE`:" is written to FILE there first.
Blocks left out are in SKIPPED, each with its reason.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TIMEOUT_S = 240

# What a block is left out for, by page and the block's first line.
SKIPPED: dict[tuple[str, str], str] = {
    ("docs/api.md", "carbon-ledger serve --db URL --keys DIR [--host 127.0.0.1] [--port 8000] "
     "[--workers 1]"): "a synopsis of the options, not a command",
    ("docs/audit.md", "carbon-ledger verify [--db URL] [--keys DIR] [--operator-key KEY] "
     "[--workers N] [--json]"): "a synopsis of the options, not a command",
    ("docs/commands.md", "carbon-ledger ticket SM-0000003"):
        "runs after the page's command examples, in tests/docs/test_command_examples.py",
    ("docs/operations.md", "carbon-ledger verify --db URL --keys DIR          # a clean audit "
     "first"): "needs a registry made before rules editions: tests/api/test_cli_rules.py runs "
     "verify, adopt-rules 2 and verify on the edition-1 fixture",
}

# A place in the docs -> what stands in for it here ({pg}: a fresh PostgreSQL schema's URL,
# {port}: a free loopback port, {keys}: the demo registry's key folder).
SUBSTITUTIONS: list[tuple[str, str]] = [
    ("postgresql://ledger@db.internal:5432/registry?schema=sanming", "{pg}"),
    ("postgresql://…", "{pg}"),
    ("/srv/carbon-ledger/keys", "{keys}"),
    ("sqlite:///path/registry.db", "sqlite:///var/registry.db"),
    ("/path/keys", "{keys}"),
    ("--host 0.0.0.0", "--host 127.0.0.1"),  # never listen beyond loopback in a test
    ("127.0.0.1:8000", "127.0.0.1:{port}"),
    ("--port 8000", "--port {port}"),
    ("--operator-key KEY", '--operator-key "$(carbon-ledger operator-key)"'),
]

# Defined before every block: `serve` is started, seen answering, and stopped; a block that
# talks to a server (--url) gets one over its registry for its whole run.
PREAMBLE = r"""
set -euo pipefail
wait_up() {  # pid: until http://127.0.0.1:$DOCS_PORT/healthz answers, or the server exits
  for _ in $(seq 600); do
    if "$DOCS_PYTHON" -c 'import httpx, os, sys; sys.exit(httpx.get(
        "http://127.0.0.1:%s/healthz" % os.environ["DOCS_PORT"], timeout=1).status_code != 200)' \
        2>/dev/null; then return 0; fi
    kill -0 "$1" 2>/dev/null || { cat serve.log >&2; return 1; }
    sleep 0.1
  done
  cat serve.log >&2; return 1
}
carbon-ledger() {
  if [[ "${1:-}" != serve ]]; then command carbon-ledger "$@"; return; fi
  command carbon-ledger "$@" >serve.log 2>&1 &
  local pid=$!
  wait_up "$pid" || { kill "$pid" 2>/dev/null; return 1; }
  kill -INT "$pid"; wait "$pid" || true
  echo "(the server answered on port $DOCS_PORT, and was stopped)" >&2
}
if [[ -n "${DOCS_SERVE:-}" ]]; then
  command carbon-ledger serve --port "$DOCS_PORT" >serve.log 2>&1 &
  DOCS_SERVER=$!
  trap 'kill -INT $DOCS_SERVER 2>/dev/null; wait $DOCS_SERVER 2>/dev/null || true' EXIT
  wait_up "$DOCS_SERVER"
fi
"""


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    script: str
    output: str | None  # the ```text block right after it, if any
    files: tuple[tuple[str, str], ...] = ()  # ("With `eod.csv`:", its block) since the last one

    @property
    def first(self) -> str:
        return self.script.strip().splitlines()[0]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def code(self) -> str:
        """The script without comments, and without the ops/ lines: ops/demo and ops/test are
        run by tests/e2e/test_ops_demo.py and tests/api/test_cli_terminal.py (and by CI)."""
        lines = [re.sub(r"(^|\s)#\s.*$", "", line).rstrip() for line in self.script.splitlines()]
        return "\n".join(line for line in lines if line and not line.startswith("ops/")) + "\n"

    @property
    def setup(self) -> str:
        if "var/demo/registry.db" in self.code:
            return "after-ops-demo"
        if re.search(r"^carbon-ledger init\b|&& carbon-ledger init\b", self.code, re.M):
            return "empty"
        return "demo"


def examples(pages: list[Path] = PAGES, root: Path = REPO) -> list[Example]:
    found = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        last = 0
        for m in re.finditer(r"^```sh\n(.*?)^```\n", text, re.S | re.M):
            files = tuple(re.findall(r"With `([\w.-]+)`:\s*\n\s*```text\n(.*?)^```",
                                     text[last:m.start()], re.S | re.M))
            last = m.end()
            script = m.group(1)
            if not re.search(r"^(\$ )?carbon-ledger\b", script, re.M):
                continue  # ops/ scripts, openssl, cat: not this test's (see tests/e2e/test_ops_demo.py)
            shown = re.match(r"\s*```text\n(.*?)^```", text[m.end():], re.S | re.M)
            found.append(Example(str(page.relative_to(root)), text[:m.start()].count("\n") + 1,
                                 script, shown.group(1) if shown else None, files))
    return found


def units(found: list[Example]) -> list[list[Example]]:
    """What runs in one folder: a page's session (its blocks that show output, in order), or
    one block on its own."""
    sessions: dict[str, list[Example]] = {}
    alone = []
    for e in found:
        if (e.page, e.first) in SKIPPED:
            continue
        if e.output is not None and e.setup == "demo":
            sessions.setdefault(e.page, []).append(e)
        else:
            alone.append([e])
    return alone + list(sessions.values())


EXAMPLES = examples()
UNITS = units(EXAMPLES)

# Values that differ from one run to the next, each put as one mark on both sides.
RANDOM = [
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?"), "<time>"),
    (re.compile(r"ed25519:[A-Za-z0-9+/]{43}="), "<public key>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<key id>"),
    (re.compile(r"/[0-9a-f]{16}\b"), "/<random>"),  # a command id made at random
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(folder: Path, port: int, path: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CARBON_LEDGER_DB", "CARBON_LEDGER_KEYS", "CARBON_LEDGER_DEMO_DIR",
                        "VIRTUAL_ENV", "COLUMNS")}
    env.update(PATH=path or f"{VENV_BIN}:/usr/bin:/bin", DOCS_PORT=str(port),
               DOCS_PYTHON=sys.executable, PYTHONUNBUFFERED="1", HOME=str(folder))
    return env


def run_script(script: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", PREAMBLE + script], capture_output=True, text=True,
                          cwd=folder, env=env, timeout=TIMEOUT_S, check=False)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose var/registry.db (the default --db) holds the demo story."""
    folder = tmp_path_factory.mktemp("docs-demo")
    made = run_script("carbon-ledger init --origin carbon-ledger.demo/sanming >/dev/null\n"
                      "carbon-ledger demo --json >/dev/null\n", folder, env_for(folder, 0))
    assert made.returncode == 0, made.stderr
    return folder


COMMAND = ('{"command": "record_emissions", "actor": "fujian-eco", "command_id": "docs/emissions", '
           '"args": {"entity": "jinsen-carbon", "scheme": "fujian_ets", "period": "2022", '
           '"verified_emissions_t": 1200}}\n')


def test_the_docs_have_shell_examples() -> None:
    pages = {e.page for e in EXAMPLES}
    assert {"README.md", "docs/commands.md", "docs/model.md", "docs/operations.md"} <= pages
    stale = [key for key in SKIPPED if key not in {(e.page, e.first) for e in EXAMPLES}]
    assert not stale, f"SKIPPED names blocks the docs no longer have: {stale}"


def test_a_page_session_files_and_refusals_are_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("""
```sh
carbon-ledger init
```

```sh
carbon-ledger ticket SM-0000001
```

```text
ticket SM-0000001
```

With `eod.csv`:

```text
trade_id,seller
```

```sh
carbon-ledger settle-batch eod.csv --as x
```

```text
error invalid_argument: no
```
""", encoding="utf-8")
    found = examples([page], tmp_path)
    assert [(e.line, e.setup, e.output) for e in found] == [
        (2, "empty", None), (6, "demo", "ticket SM-0000001\n"),
        (20, "demo", "error invalid_argument: no\n")]
    assert found[2].files == (("eod.csv", "trade_id,seller\n"),)
    assert [[e.line for e in u] for u in units(found)] == [[2], [6, 20]]
    assert _lines("command id freeze/x/033eac9b16c3eeca at 2026-12-08T10:34:02+08:00") == \
        ["command id freeze/x/<random> at <time>"]


def test_skipped_blocks_are_skipped_for_their_reason() -> None:
    for (page, first), reason in SKIPPED.items():
        assert reason and any(e.page == page and e.first == first for e in EXAMPLES)


@pytest.mark.parametrize("unit", UNITS, ids=[u[0].id if len(u) == 1 else f"{u[0].page}:session"
                                              for u in UNITS])
def test_shell_example(unit: list[Example], demo_folder: Path, tmp_path: Path,
                       request: pytest.FixtureRequest) -> None:
    folder = tmp_path / "run"
    port = free_port()
    path = None
    setup = unit[0].setup
    if setup == "demo":
        shutil.copytree(demo_folder, folder)
    elif setup == "after-ops-demo":  # a checkout after ops/demo: var/demo/, .venv/
        (folder / "var").mkdir(parents=True)
        shutil.copytree(demo_folder / "var", folder / "var" / "demo")
        (folder / ".venv").symlink_to(VENV_BIN.parent)
        path = "/usr/bin:/bin"  # as in a new terminal: the example's own export finds the CLI
    else:
        folder.mkdir()
    (folder / "command.json").write_text(COMMAND, encoding="utf-8")
    for example in unit:
        run_example(example, folder, port, path, request)


def run_example(example: Example, folder: Path, port: int, path: str | None,
                request: pytest.FixtureRequest) -> None:
    for name, content in example.files:
        (folder / name).write_text(content, encoding="utf-8")
    script = example.code
    for place, stand_in in SUBSTITUTIONS:
        if place in script:
            pg = request.getfixturevalue("pg_url") if "{pg}" in stand_in else ""
            script = script.replace(place, stand_in.format(
                port=port, keys=folder / "var" / "registry.db.keys", pg=pg))
    env = env_for(folder, port, path)
    if example.setup == "demo":  # as a page that set it before (operations.md) leaves it
        env["CARBON_LEDGER_DB"] = "sqlite:///var/registry.db"
    if "--url http://127.0.0.1:" in script:
        env["DOCS_SERVE"] = "1"
    done = run_script(script, folder, env)
    assert "Traceback" not in done.stderr, done.stderr
    refusal = example.output is not None and example.output.startswith("error ")
    if refusal:
        assert done.returncode == 1, f"{example.id}: the refusal shown was not refused:\n{done.stdout}"
    else:
        assert done.returncode == 0, f"{example.id} failed:\n{script}\n{done.stdout}\n{done.stderr}"
    if example.output is not None:
        printed = done.stderr if refusal else done.stdout
        assert _lines(printed) == _lines(example.output), (
            f"{example.id}: the output shown is not what the command prints:\n{printed}")


def _lines(text: str) -> list[str]:
    for pattern, mark in RANDOM:
        text = pattern.sub(mark, text)
    return [line.rstrip() for line in text.strip("\n").splitlines()]
