#!/usr/bin/env bash
# Create a Cloud TPU VM, install softcls-jax on every worker, run one sweep across all of them, fetch
# the results, and (with --delete) delete the VM.
#
#   launch/tpu_vm.sh --name=NAME --zone=ZONE [--accelerator=v5litepod-8] [--version=VERSION]
#                    [--project=PROJECT] [--delete] [--dry-run] [-- sweep flags...]
#   launch/tpu_vm.sh --dry-run --name=sweep-1 --zone=us-west4-a -- --loss=all --num_lrs=32 --seeds=4
#
# Every worker runs `python -m experiments.sweep --distributed`: jax.distributed.initialize needs no
# addresses on a TPU VM, all workers train one sharded grid together, and worker 0 alone writes the
# results, which are copied back to runs/tpu-NAME. --dry-run prints the gcloud commands instead.
set -euo pipefail
name="" zone="" accelerator="v5litepod-8" version="tpu-ubuntu2204-base" project="" delete=0 dry_run=0
sweep_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --delete) delete=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; sweep_args=("$@"); break ;;
    *) echo "error: unknown argument $1 (sweep flags go after --)" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$name" || -z "$zone" ]]; then
  echo "error: --name and --zone are required" >&2
  exit 2
fi
run() {
  echo "+ $*"
  if [[ $dry_run == 0 ]]; then "$@"; fi
}
cd "$(dirname "$0")/.."
project_flag=()
if [[ -n "$project" ]]; then project_flag=(--project="$project"); fi
tpu=(gcloud compute tpus tpu-vm)
archive="softcls-jax.tar.gz"
remote_cmd="mkdir -p softcls-jax && tar -xzf $archive -C softcls-jax && cd softcls-jax \
&& python3 -m pip install --upgrade 'jax[tpu]' && python3 -m pip install -e . \
&& python3 -m experiments.sweep --distributed --workdir=runs/tpu ${sweep_args[*]:-}"

run "${tpu[@]}" create "$name" --zone="$zone" --accelerator-type="$accelerator" --version="$version" "${project_flag[@]}"
run git archive --format=tar.gz -o "$archive" HEAD
run "${tpu[@]}" scp "$archive" "$name":~ --zone="$zone" --worker=all "${project_flag[@]}"
run "${tpu[@]}" ssh "$name" --zone="$zone" --worker=all "${project_flag[@]}" --command="$remote_cmd"
run "${tpu[@]}" scp --recurse "$name":~/softcls-jax/runs/tpu "runs/tpu-$name" --zone="$zone" --worker=0 "${project_flag[@]}"
if [[ $delete == 1 ]]; then
  run "${tpu[@]}" delete "$name" --zone="$zone" --quiet "${project_flag[@]}"
fi
echo "results: runs/tpu-$name"
