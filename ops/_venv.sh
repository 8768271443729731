# Sourced by ops/* scripts: find Python >= 3.11, create or reuse .venv, install the project.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [[ -n "$candidate" ]] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "ops: Python 3.11 or newer is needed and was not found" >&2
  return 1
}
(
  cd "$ROOT"
  if [[ ! -x .venv/bin/python ]]; then
    PY="$(find_python)"
    echo "ops: creating .venv with $("$PY" --version)" >&2
    "$PY" -m venv .venv
  fi
  # Reinstall only when pyproject.toml changed since the last install.
  STAMP=.venv/.installed-pyproject
  if [[ ! -f "$STAMP" ]] || ! cmp -s pyproject.toml "$STAMP"; then
    echo "ops: installing carbon-ledger and its dependencies into .venv" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 \
      | grep -v "^WARNING: Location" >&2 || true
    .venv/bin/python -c 'import domain, ledger, api, eventsourcing, msgpack, hypothesis, psycopg' \
      || { echo "ops: installation failed" >&2; exit 1; }
    cp pyproject.toml "$STAMP"
  fi
)
export PATH="$ROOT/.venv/bin:$PATH"
