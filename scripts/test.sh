#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the CPU test suite (GPU tests skip themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# two workers, one thread each (tests/conftest.py): the 2-core CI machine stays busy without oversubscription;
# the 25 slowest tests are listed at the end, so a test that grows slow shows up in every CI log
exec .venv/bin/python -m pytest -q -n 2 --durations=25 "$@"
