#!/usr/bin/env bash
# The cuda plugin's checks on a real GPU, in one call (issue #13 item 7). Nothing here has run
# on a GPU yet: the session that wrote it had none.
#
# Prepare (on the development machine, in the repo root; gguf is the one dependency missing from
# the GPU image, see /work/.library/device/KINDS.md):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl gguf
# Run (the device tool): command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 590.
# Every step has its own time limit and writes its log under $OUT, so a step that runs out of
# time still leaves the others' results. Copy the figures into benchmarks/RESULTS.md.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc=$rc in $((SECONDS - start))s" | tee -a "$OUT/summary.txt"
    tail -n 25 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/summary.txt"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
python3 -m venv --system-site-packages /tmp/venv
/tmp/venv/bin/pip install -q --no-index --no-deps --no-build-isolation \
    -e . -e ./plugins/cpu -e ./plugins/cuda -e ./conformance_tests >"$OUT/install.log" 2>&1 ||
    { echo "install failed"; tail -n 30 "$OUT/install.log"; exit 1; }
PY=/tmp/venv/bin/python
unset MLPLUG_CUDA_EMULATE

step backends 60 $PY -m mlplug.cli backends
step kernels 150 $PY -m pytest -q -p no:cacheprovider plugins/cuda/tests/test_gpu.py -rs
step conformance 200 $PY -m mlplug.cli conformance --backend cuda \
    --expectations plugins/cuda/src/mlplug_cuda/expectations.toml --json "$OUT/conformance-cuda.json"
step memory 60 $PY -m mlplug.cli conformance --backend cuda --mode memory
step run 60 $PY -m mlplug.cli run --backend cuda --num-gpu-layers 99 -p "Hello" -n 16
step bench 200 $PY benchmarks/bench_cuda.py --type Q4_0 --prompt 512 --decode 64 \
    --json "$OUT/bench-cuda.json"
cat "$OUT/summary.txt"
