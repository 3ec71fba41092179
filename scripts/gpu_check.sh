#!/usr/bin/env bash
# The GPU check: the project on a CUDA GPU as on the CPU, in one command, within 8 minutes.
#
#   scripts/gpu_check.sh [OUT_DIR]          # default gpu_check/ (git-ignored); the report is OUT_DIR/gpu.md
#
# Steps (each with a time limit, so the whole check ends within 8 minutes; each logged in OUT_DIR):
#   env      python, torch (whatever version this machine has: recorded, not pinned), CUDA, the GPU;
#   tests    the default test suite with CUDA present: the `device`-fixture tests run on cuda as well,
#            the gpu-marked tests run, and the tiny experiments run with device=auto (cuda);
#   compare  every experiment at its tiny size on cuda and on the CPU, in fresh processes, tables compared
#            column by column (python -m scripts.compare_devices): the networks are the same (drawn on the
#            CPU), so kernels and losses must agree within float tolerance;
#   bench    interleaved rounds against the same rounds' cuBLAS GEMM rate: the layer-wise kernel at widths
#            1000, 4000 and 10000 (NTK-vector products and the torch.func Jacobian contraction where they fit
#            and one call takes under 3 s), with the GPU-time profile of its kernels; fused training steps
#            (width 10000, N = 16 and 64; MNIST inputs at width 1000, N = 512) against autograd + SGD;
#   report   OUT_DIR/gpu.md (python -m scripts.gpu_report): every step's status, time and result.
# Commit OUT_DIR/gpu.md as results/bench/gpu.md. Exit status: 0 if every step passed, else 1.
#
# Packages. A GPU machine usually has torch, numpy, scipy, pandas, matplotlib, tqdm, tabulate, PyYAML,
# joblib and pytest, but not hydra-core, omegaconf, antlr4-python3-runtime, the two Hydra launchers,
# submitit or mlxtend, and often no internet. Download those beforehand on a machine that has it:
#     scripts/gpu_wheels.sh            # writes .whl/ (1.8 MB, pure-Python wheels, versions of requirements.txt)
# and bring .whl/ along with the checkout: this script installs every missing one from there into a
# private folder (pip --no-index --no-deps --target), leaving the machine's own packages untouched.
#
# GPU_CHECK_TESTS="tests/test_devices.py" limits the tests step to those pytest arguments (a quick try).
# Without CUDA the same steps run on the CPU (compare: cpu against cpu; bench: the width-1000 case and a
# width-1000 step only), so that the script itself is tested anywhere; gpu.md then says no GPU was present.
set -uo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-gpu_check}")"
py="${PYTHON:-python3}"
rm -rf "$out" && mkdir -p "$out/bench"
: > "$out/steps.tsv"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

missing=$("$py" - <<'EOF'
import importlib.util
mods = {"hydra": "hydra_core", "omegaconf": "omegaconf", "antlr4": "antlr4_python3_runtime", "mlxtend": "mlxtend",
        "hydra_plugins.hydra_joblib_launcher": "hydra_joblib_launcher", "hydra_plugins.hydra_submitit_launcher": "hydra_submitit_launcher",
        "submitit": "submitit"}
def found(m):
    try:
        return importlib.util.find_spec(m) is not None
    except ModuleNotFoundError:
        return False
print(" ".join(w for m, w in mods.items() if not found(m)))
EOF
)
if [ -n "$missing" ]; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: missing packages ($missing) and no wheels under .whl/; run scripts/gpu_wheels.sh where there is internet" >&2
    exit 2
  fi
  site="${TMPDIR:-/tmp}/ntk-gpu-check-site"
  wheels=()
  for w in $missing; do wheels+=(.whl/"$w"-*.whl); done
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}" || exit 2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed from .whl/ into $site: $missing"
fi

# step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log, note status and time
status=0
step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$name.log" >> "$out/steps.tsv"
  tail -n 3 "$out/$name.log"
  [ "$rc" -eq 0 ] || status=1
}

step env 60 "$py" -m scripts.gpu_report env "$out"
if "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  devices="[cpu,cuda]"
  bench=(cases=[0,2,3] rounds=7 slow_limit=3)
  train=(width=10000 depth=4 batches=[16,64])
  mnist_step=(width=1000 depth=5 in_dim=784 batches=[512] name=train_step_mnist)
else
  echo "no CUDA device: running the CPU fallback of every step"
  devices="[cpu,cpu]"
  bench=(cases=[0] rounds=3 slow_limit=1)
  train=(width=1000 depth=4 batches=[16] rounds=3)
  mnist_step=()
fi
# shellcheck disable=SC2086  # GPU_CHECK_TESTS: optional pytest arguments, e.g. one file for a quick try of the script
step tests 220 "$py" -m pytest -q -p no:cacheprovider ${GPU_CHECK_TESTS:-}
step compare 90 "$py" -m scripts.compare_devices devices="$devices" out_dir="$out/compare"
step bench_ntk 90 "$py" -m scripts.bench_ntk "${bench[@]}" out_dir="$out/bench"
step bench_train_step 25 "$py" -m scripts.bench_train_step "${train[@]}" out_dir="$out/bench"
if [ "${#mnist_step[@]}" -gt 0 ]; then
  step bench_train_step_mnist 25 "$py" -m scripts.bench_train_step "${mnist_step[@]}" out_dir="$out/bench"
fi
"$py" -m scripts.gpu_report report "$out" > /dev/null || status=1
echo "report: $out/gpu.md (exit status $status)"
exit $status
