#!/usr/bin/env bash
# Run `flwr run .` in Flower's local simulation with a Flower home of this checkout's own (.flwr),
# then stop the local SuperLink that `flwr run` started. Extra arguments go to `flwr run`.
#
# `flwr run --stream` exits 0 even when the ServerApp fails (a refused resume, a run in which every
# client fails): the outcome is only in the run's status. So this script asks the SuperLink for it
# (`flwr ls --run-id N --format json`) and exits 1 unless the run finished as completed, with the
# reason in its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLWR_HOME="${FLWR_HOME:-$PWD/.flwr}"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
mkdir -p "$FLWR_HOME"
NUM_SUPERNODES="${NUM_SUPERNODES:-4}"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local"

[superlink.local]
address = ":local:"
options.num-supernodes = $NUM_SUPERNODES
options.backend.client-resources.num-cpus = 1
TOML

OUTPUT=$(mktemp)
stop_superlink() {
  # The SuperLink that `flwr run` started logs into this Flower home: that identifies it.
  local pids
  pids=$(pgrep -f "flower-superlink.*$FLWR_HOME/" || true)
  if [ -n "$pids" ]; then
    kill $pids 2>/dev/null || true
  fi
  rm -f "$OUTPUT"
}
trap stop_superlink EXIT

set +e
flwr run . --stream "$@" 2>&1 | tee "$OUTPUT"
code=${PIPESTATUS[0]}
set -e
run_id=$(grep -oE "Successfully started run [0-9]+" "$OUTPUT" | grep -oE "[0-9]+$" | tail -n 1 || true)
if [ -z "$run_id" ]; then
  echo "f3ocus: FAILED: flwr run started no run (exit status $code); see the lines above."
  exit 1
fi

# The status of run N as "STATUS<TAB>DETAILS" on one line; wait (up to a minute) until it is finished.
run_status() {
  flwr ls --run-id "$run_id" --format json 2>/dev/null | python3 -c '
import json, sys
text = sys.stdin.read()
try:
    run = json.loads(text[text.index("{"):])["runs"][0]
except (ValueError, KeyError, IndexError):
    print("unknown\tflwr ls gave no status")
else:
    details = " ".join(str(run.get("status-details") or "").split())
    print(str(run.get("status")) + "\t" + details)
'
}
for _ in $(seq 1 60); do
  line=$(run_status || echo "unknown	flwr ls failed")
  case "$line" in finished*) break ;; esac
  sleep 1
done
status=${line%%	*}
details=${line#*	}
if [ "$status" != "finished:completed" ]; then
  echo "f3ocus: FAILED: run $run_id ended as ${status}: ${details:-no details}"
  exit 1
fi
if [ "$code" -ne 0 ]; then
  echo "f3ocus: FAILED: flwr run exited with status $code."
  exit "$code"
fi
echo "f3ocus: run $run_id finished:completed."
