#!/usr/bin/env bash
# Notebook 06's GPU targets in one device run (about 8 minutes on an H100: 300 s of training for
# `quality`, compilation, then the 124M MFU run). The device machine has PyTorch but no network
# and no ../shared, so the data travels in an ignored folder. Here, in the repo root, once:
#
#   echo /.gpu_data/ >> .git/info/exclude && mkdir -p .gpu_data && cp ../shared/data/*.t* .gpu_data/
#
# then run it there with carry [".gpu_data"] and timeout_s 600:
#
#   bash benchmarks/gpu_check.sh            # JSON and logs land in $OUT (or build/gpu)
#
# Copy the figures into docs/results.md with the device line from nvidia-smi.txt.
set -uo pipefail
out=${OUT:-build/gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export COURSE_DATA_MIRROR=${COURSE_DATA_MIRROR:-$PWD/.gpu_data} COURSE_DATA_DIR=${COURSE_DATA_DIR:-/tmp/course_data}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$out/nvidia-smi.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$out/env.txt"
python3 benchmarks/gpt_gpu.py quality mfu --out "$out/gpt_gpu.json" 2>&1 | tee "$out/gpt_gpu.log"
