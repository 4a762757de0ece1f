#!/usr/bin/env bash
# Scheduled retraining: run every stage, then promote the new model only if it beats the champion.
#
#   launch/cron/retrain.sh CONFIG [key.sub=value ...]
#   launch/cron/retrain.sh configs/default.yaml registry.dir=/srv/registry output_dir=/srv/runs/{name}
#
# Runs `$PYTHON -m pipeline run --config CONFIG --promote [overrides]` from the repository root (or
# the directory in RETRAIN_DIR), with registry.dir taken from the config or the overrides; the same
# interpreter then reads the decision, so both steps run the one installed pipeline. Stages whose
# inputs did not change are skipped, so a night without new data costs a few seconds.
#
# Exit code (for cron mail, monitoring, SLURM):
#   0   promoted (or unchanged: the current model is already this run's export)
#   3   trained and scored, but not promoted (the champion stays; see history.jsonl)
#   2   bad config or input, or a broken registry (one line on stderr says what)
#   1   internal error, or the run was killed (a TERM, INT or HUP sent to this script stops the run too)
#   75  another retraining of this config holds the lock; nothing was done
# The run itself exits 0 whatever the decision; the decision is read back from the last line of
# <registry.dir>/<name>/history.jsonl (`$PYTHON -m pipeline decision`), which is this run's
# because the lock keeps runs from overlapping.
#
# Environment: LOCK_FILE (default: /tmp/lstm-pipeline-retrain-<config name>.lock), PYTHON (the
# interpreter of the environment lstm-pipeline is installed in; default: python3 on PATH),
# RETRAIN_DIR (where to run; default: the repository this script is in).
set -uo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 CONFIG [key.sub=value ...]" >&2
  exit 2
fi
CONFIG="$1"
shift

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "${RETRAIN_DIR:-$here/../..}" || exit 2
PYTHON="${PYTHON:-python3}"
# /tmp, not $TMPDIR: a scheduler may give each job its own TMPDIR, and two jobs would each hold a lock
LOCK_FILE="${LOCK_FILE:-/tmp/lstm-pipeline-retrain-$(basename "$CONFIG" .yaml).lock}"

# flock: one retraining at a time; a second one started while the first runs gives up at once.
exec 9>>"$LOCK_FILE" || exit 2
if ! flock -n 9; then
  echo "$(date -u +%FT%TZ) retrain: another run holds $LOCK_FILE; skipped" >&2
  exit 75
fi

# A TERM, INT or HUP sent to this script (`timeout`, `kill`, a scheduler stopping the job) stops the run too:
# without this the run went on training in the background, holding the lock, after the script had exited 143.
run_pid=""
stop() {
  if [[ -n "$run_pid" ]]; then
    kill -TERM "$run_pid" 2>/dev/null && wait "$run_pid"
    echo "$(date -u +%FT%TZ) retrain: stopped by a signal, and the run with it (the registry changes only at its end)" >&2
  else
    echo "$(date -u +%FT%TZ) retrain: stopped by a signal" >&2
  fi
  exit 1
}
trap stop TERM INT HUP

echo "$(date -u +%FT%TZ) retrain: $PYTHON -m pipeline run --config $CONFIG --promote $*" >&2
"$PYTHON" -m pipeline run --config "$CONFIG" --promote "$@" &
run_pid=$!
wait "$run_pid"
rc=$?
run_pid=""
if [[ $rc -ne 0 ]]; then
  echo "$(date -u +%FT%TZ) retrain: run failed with exit code $rc; the registry is unchanged" >&2
  [[ $rc -eq 2 ]] && exit 2
  exit 1
fi

# the decision reads the same config and overrides; the run's switches (--force) are not the decision's
overrides=()
for arg in "$@"; do
  [[ "$arg" == "--force" ]] || overrides+=("$arg")
done
"$PYTHON" -m pipeline decision --config "$CONFIG" ${overrides[@]+"${overrides[@]}"}
