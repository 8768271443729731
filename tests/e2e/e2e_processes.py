"""How the end-to-end tests reach real processes: the loopback address, the carbon-ledger
executable, free ports and a clean environment. A module of its own (not conftest.py) so that
tests import it by a name no other folder's conftest.py shadows."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

HOST = "127.0.0.1"  # never any other address
REPO = Path(__file__).resolve().parents[2]


def _venv_bin() -> Path:
    """The venv's bin folder: the repository's .venv, else the running interpreter's."""
    for candidate in (REPO / ".venv" / "bin", Path(sys.executable).parent):
        if (candidate / "carbon-ledger").exists():
            return candidate
    raise RuntimeError("no carbon-ledger executable beside the test interpreter")


CARBON_LEDGER = _venv_bin() / "carbon-ledger"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CARBON_LEDGER_DB", "CARBON_LEDGER_KEYS")}
    env["PYTHONUNBUFFERED"] = "1"
    return env
