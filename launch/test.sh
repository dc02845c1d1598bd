#!/usr/bin/env bash
# Fresh machine -> the test suite. Extra arguments go to pytest (e.g. -k distill).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test,data,tensorboard,wandb WITH_TORCH=1 bash launch/setup.sh
set +e
# Two workers: tiny tests are dominated by single-threaded XLA compiles.
.venv/bin/python -m pytest -q -n 2 --durations=10 "$@"
rc=$?
set -e
# pytest's 5 means "no tests collected": treat that as a failure, not silence.
exit $rc
