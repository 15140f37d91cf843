#!/usr/bin/env bash
# Run `flwr run .` in Flower's local simulation with a Flower home of this checkout's own (.flwr),
# then stop the local SuperLink that `flwr run` started. Extra arguments go to `flwr run`.
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

stop_superlink() {
  # The SuperLink that `flwr run` started logs into this Flower home: that identifies it.
  local pids
  pids=$(pgrep -f "flower-superlink.*$FLWR_HOME/" || true)
  if [ -n "$pids" ]; then
    kill $pids 2>/dev/null || true
  fi
}
trap stop_superlink EXIT
flwr run . --stream "$@"
