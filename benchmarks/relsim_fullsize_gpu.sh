#!/usr/bin/env bash
# The full-size relsim measurement on a lent GPU (one NVIDIA H200), prepared to run once in one call.
#
# The device machine has torch, peft, typer, safetensors, tokenizers but not lmdb or faiss-cpu,
# and an older transformers; carry them as wheels (Python 3.12 there), from the repository root here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl faiss-cpu==1.15.1 lmdb==3.0.0 transformers==5.24.0 peft==0.21.2
# then call the device tool's run with carry [".whl"], timeout_s 600 and the command
#   bash benchmarks/relsim_fullsize_gpu.sh
# It writes relsim_fullsize_<gpu>.json/.png under $OUT (copy them to benchmarks/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT" /tmp/relsim-e2e
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# Fast path at batch 1/8/32/64, the paper's one-image loop, equivalence, then build-index on 2,000 JPEGs.
python3 -m relsearch bench relsim --device cuda --arch full --batch-sizes 1,8,32,64 --images 256 \
  --paper-images 32 --e2e-images 2000 --work-dir /tmp/relsim-e2e --results-dir "$OUT" 2>&1 | tee "$OUT/relsim_bench.log"
