#!/bin/bash
# A development session with a lent GPU machine runs this there (see README.md beside it).
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MMCL_CACHE=/tmp/mmcl-cache
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c 'import torch,transformers,open_clip;print(torch.__version__,transformers.__version__,open_clip.__version__, torch.cuda.get_device_name())'; lscpu | grep -E 'Model name|^CPU\(s\)'; grep -o 'amx_bf16' /proc/cpuinfo | head -1; } 2>&1 | tee $OUT/machine.txt
SECONDS=0
timeout ${T1:-200} python3 -m pytest -q -x -p no:cacheprovider -n 6 gpu_tests -rA --junitxml=$OUT/gpu_tests.xml 2>&1 | tail -60 | tee $OUT/gpu_tests.txt
echo "gpu_tests: ${SECONDS}s"; SECONDS=0
if [ -n "$SUITE" ]; then
MMCL_NATIVE_KERNELS=0 timeout ${T2:-170} python3 -m pytest -q -p no:cacheprovider -n 14 $SUITE 2>&1 | tail -80 > $OUT/suite.txt; tail -40 $OUT/suite.txt
echo "suite: ${SECONDS}s"; SECONDS=0
fi
if [ -n "$BENCH" ]; then
timeout ${T3:-200} python3 benchmarks/inference.py --device cuda --images .gpu/cifar10/test --limit 2000 --json $OUT/inference.json $BENCH 2>&1 | tail -60 | tee $OUT/inference.txt
echo "bench: ${SECONDS}s"
fi
