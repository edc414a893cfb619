#!/usr/bin/env bash
# Install JAX with CUDA on a GPU host and run a sweep on its GPU(s).
#
#   launch/gpu.sh [--dry-run] [sweep flags...]
#   launch/gpu.sh --loss=all --num_lrs=64 --seeds=8 --workdir=runs/gpu_big
#
# The config axis is sharded over every visible GPU. JAX_CUDA_EXTRA picks the wheel (cuda12 or
# cuda13, default cuda12). --dry-run prints the commands without running them.
set -euo pipefail
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
run() {
  echo "+ $*"
  if [[ $dry_run == 0 ]]; then "$@"; fi
}
cd "$(dirname "$0")/.."
venv=.venv-gpu
run python3 -m venv "$venv"
run "$venv/bin/pip" install --upgrade pip
run "$venv/bin/pip" install --upgrade "jax[${JAX_CUDA_EXTRA:-cuda12}]"
run "$venv/bin/pip" install -e .
run "$venv/bin/python" -c "import jax; print('devices:', jax.devices())"
has_workdir=0
for arg in "$@"; do [[ "$arg" == --workdir=* ]] && has_workdir=1; done
extra=()
if [[ $has_workdir == 0 ]]; then extra+=(--workdir=runs/gpu); fi
run "$venv/bin/python" -m experiments.sweep "${extra[@]}" "$@"
