#!/usr/bin/env bash
# Install (first time only) and run the coldprompt command line, e.g. `scripts/coldprompt.sh run`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${COLDPROMPT_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/coldprompt" ]; then
    bash "$root/scripts/install.sh" >&2
fi
exec "$venv/bin/coldprompt" "$@"
