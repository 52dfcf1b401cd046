#!/usr/bin/env bash
# Every GPU figure in one go, on a machine with an NVIDIA GPU: installs LoopML if needed (PyPI's torch wheels for
# Linux carry CUDA), runs the CUDA tests (tests/gpu), then prints the GPU benchmarks. Well inside 10 minutes.
#   bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_CACHE_HOME="$PWD/.loopml/cache"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "bench/gpu.sh: no NVIDIA GPU on this machine; the GPU figures need one" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PY=.venv/bin/python
[ -x "$PY" ] || make install
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch was built without CUDA: reinstall it from PyPI'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
echo "==> CUDA tests"
LOOPML_GPU_TESTS=1 "$PY" -m pytest -q -p no:cacheprovider tests/gpu
echo "==> GPU figures"
"$PY" bench/gpu_figures.py
echo "==> the serving API on the GPU (real server, HTTP)"
"$PY" bench/serving_images.py --gpu --seconds 4 --clients 8
echo "==> the text deep tier on the GPU (fine-tuned MiniLM beside the AutoML model; 1 seed per budget)"
timeout 300 "$PY" bench/text_deep_tier.py --seeds 1 --sizes 8,32,128 || echo "text deep tier bench: stopped after 300 s"
