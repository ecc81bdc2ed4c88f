#!/usr/bin/env bash
# Set up (first run only) and run the test suite. Extra arguments go to pytest (e.g. -m "not integration").
set -uo pipefail
cd "$(dirname "$0")/.."
./launch/install.sh || exit 1
source launch/env.sh
# Static checks first: a lint, format or type error fails in seconds, before the suite's minutes.
.venv/bin/ruff check . || { echo "ruff check failed: fix the findings above (ruff check . --fix fixes many)" >&2; exit 1; }
.venv/bin/ruff format --check . || { echo "ruff format: files above need formatting (run: ruff format .)" >&2; exit 1; }
.venv/bin/mypy || { echo "mypy failed: fix the type errors above ([tool.mypy] in pyproject.toml)" >&2; exit 1; }
.venv/bin/python -m pytest --timeout=900 "$@"
status=$?
# pytest exits 5 when no test was collected (e.g. a -k filter matching nothing): that is a failure
# for CI, never a silent pass.
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
