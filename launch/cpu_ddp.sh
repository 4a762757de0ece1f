#!/usr/bin/env bash
# Data-parallel training on the CPU cores of one machine (DDP over gloo), with torchrun.
#
#   launch/cpu_ddp.sh [CONFIG] [key.sub=value ...]
#   NPROC=4 launch/cpu_ddp.sh configs/default.yaml train.max_steps=200
#
# Why torchrun and not `accelerate launch --cpu`: without an MPI hostfile, `accelerate launch --cpu`
# runs the script in one process whatever --num_processes says. torchrun starts NPROC processes;
# ACCELERATE_USE_CPU=true tells Accelerate to join them over gloo on the CPU.
#
# Threads: with train.num_threads: auto (the default) each process times one thread against the available
# cores divided by the number of processes on the machine (torchrun's LOCAL_WORLD_SIZE) and keeps the
# faster (docs/launch.md, Notes). Set train.num_threads=N to choose.
#
# train.batch_size is the global batch: it must be divisible by NPROC x train.gradient_accumulation_steps.
# Run from the repository root with the project's environment active (python and torchrun on PATH).
set -euo pipefail

# Ingest and window in one plain process; skipped when their inputs have not changed.
python -m pipeline ingest --config "${1:-configs/default.yaml}" "${@:2}"
python -m pipeline window --config "${1:-configs/default.yaml}" "${@:2}"

ACCELERATE_USE_CPU=true torchrun --nproc_per_node "${NPROC:-2}" -m pipeline train --config "${1:-configs/default.yaml}" "${@:2}"
