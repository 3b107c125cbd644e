#!/usr/bin/env bash
# The GPU figures the open issues ask for, in one `device` session (benchmarks/README.md,
# "On a GPU"). That machine has JAX but no TensorFlow and no internet: Keras runs on JAX,
# the missing pure-Python packages travel as wheels, MLflow stays home (tracking=none).
#
# Here, once per checkout:
#   benchmarks/device.sh prepare   # wheels for its Python 3.12 into .whl/, Fashion-MNIST
#                                  # into .data/ (both ignored by .git/info/exclude)
# There, through the device tool's `run` with carry [".whl", ".data"], one command each:
#   bash benchmarks/device.sh scaling   # 1, 2, 4, 8 workers on the one GPU (~4 min)
#   bash benchmarks/device.sh fashion   # all 54,000 training images, seed 0 (~7 min)
# Each leaves its JSON, a tarball of the worker logs and nvidia-smi's view in $OUT.
# DEVICE_TINY=1 runs them in tiny mode and PYTHON picks the interpreter (default python3),
# to check the script on any machine: DEVICE_TINY=1 PYTHON=.venv/bin/python OUT=/tmp/o ...
set -euo pipefail
cd "$(dirname "$0")/.."

# the packages the device image lacks (KINDS.md), at the project virtualenv's versions
PACKAGES="keras namex optree keras-tuner kt-legacy hydra-core omegaconf optuna colorlog
sqlalchemy alembic mako"
PLATFORMS="manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
manylinux2014_x86_64"
RESULTS=/tmp/device-results
TINY=${DEVICE_TINY:+--tiny}
PYTHON=${PYTHON:-python3}

pins() {   # NAME==VERSION as the project's virtualenv has it, for each name given
    .venv/bin/python -m pip freeze | grep -i -E "^($(echo "$*" | tr -s ' \n' '|'))=="
}

prepare() {
    mkdir -p .whl .data
    # shellcheck disable=SC2046
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp $(printf -- '--platform %s ' $PLATFORMS) -d .whl $(pins $PACKAGES)
    # omegaconf's parser runtime is published as source only: built here, pure Python
    .venv/bin/python -m pip wheel -q --no-deps -w .whl "$(pins antlr4-python3-runtime)"
    cp -r /usr/share/datasets/fashion-mnist .data/
    for folder in /.whl/ /.data/; do
        grep -qsxF "$folder" .git/info/exclude || echo "$folder" >> .git/info/exclude
    done
    du -sh .whl .data
}

setup() {
    if ! "$PYTHON" -c "import keras_tuner, hydra, optuna" 2>/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target /tmp/site .whl/*.whl
    fi
    mkdir -p /tmp/pkg /usr/share/datasets "$RESULTS"
    ln -sfn "$PWD" /tmp/pkg/cnnsearch   # the repository root is the package
    cp -rn .data/fashion-mnist /usr/share/datasets/
    export PYTHONPATH=/tmp/site:/tmp/pkg:$PWD${PYTHONPATH:+:$PYTHONPATH}
    export KERAS_BACKEND=${KERAS_BACKEND:-jax}
    export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
}

finish() {   # $1: the benchmark's name
    cp "$RESULTS/$1.json" "$OUT/"
    tar czf "$OUT/$1-logs.tar.gz" -C "$RESULTS" logs
}

case "${1:-}" in
    prepare)
        prepare ;;
    scaling)
        setup
        "$PYTHON" -m benchmarks.scaling $TINY --workers 1 2 4 8 --repeats 1 --trials 16 \
            --epochs 5 --overrides tracking=none --out "$RESULTS"
        finish scaling ;;
    fashion)
        setup
        "$PYTHON" -m benchmarks.fashion $TINY --limit 54000 --budget-seconds 60 --seeds 0 \
            --ours-overrides tracking=none --plot "$OUT/fashion-gpu-time-to-accuracy.png" \
            --out "$RESULTS"
        finish fashion ;;
    *)
        echo "usage: benchmarks/device.sh prepare | scaling | fashion" >&2
        exit 2 ;;
esac
