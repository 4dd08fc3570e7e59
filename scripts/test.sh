#!/usr/bin/env bash
# Install everything, then run the test suite. Extra arguments go to pytest.
#   COLDPROMPT_SHARED_DATA=DIR      run the tests on the team data sets in DIR
#   COLDPROMPT_RUN_SLOW=1           also run slow tests (real backbone, end-to-end main job)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${COLDPROMPT_VENV:-$root/.venv}"
bash "$root/scripts/install.sh"
cd "$root"
exec "$venv/bin/python" -m pytest -q -ra "$@"
