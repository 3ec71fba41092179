#!/usr/bin/env bash
# The committed results/feature_learning/: the (parameterization, width, alpha, seed) grid, then the
# wide networks at alpha = 1 and the standard parameterisation, into one directory (each multirun
# re-aggregates everything finished so far). Two jobs at a time, one thread each.
set -euo pipefail
cd "$(dirname "$0")/.."
run() { python -m experiments.run -m +exp=feature_learning hydra/launcher=joblib hydra.launcher.n_jobs=2 progress=false "$@"; }
run
run width=4096 alpha=1 parameterization=ntk,mean_field        # about 6 min a network here: alpha = 1 only
run width=64,128,256,512,1024 alpha=1 parameterization=standard
