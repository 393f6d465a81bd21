#!/usr/bin/env bash
# Creates .venv in the repo root and installs unspur in the order that works on a CPU-only
# machine and on a GPU machine alike: torch pinned first, the rest under constraints.txt.
# UNSPUR_EXTRAS=dev,gpu picks extras (default: dev). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
EXTRAS=${UNSPUR_EXTRAS:-dev}
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
TORCH=$(grep -E '^torch==' constraints.txt | head -1)
echo "[setup] installing $TORCH first (a local CPU wheel where one is offered)"
"$PY" -m pip install -q --disable-pip-version-check "$TORCH"
echo "[setup] installing unspur[$EXTRAS] under constraints.txt"
"$PY" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$EXTRAS]"

if ! "$PY" -c "import torchvision" >/dev/null 2>&1; then
  if "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda is None else 1)"; then
    SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    cp scripts/torchvision_cpu_fix.py "$SITE/_unspur_torchvision_fix.py"
    echo "import _unspur_torchvision_fix" > "$SITE/_unspur_torchvision_fix.pth"
    echo "[setup] CPU-only torch: torchvision's CUDA ops cannot load; installed the start-up fix"
    echo "[setup]   ($SITE/_unspur_torchvision_fix.pth) - torchvision.ops.nms stays unavailable"
  fi
  "$PY" -c "import torchvision" || { echo "[setup] torchvision still fails to import" >&2; exit 1; }
fi

"$PY" scripts/install_wordnet.py || echo "[setup] WordNet not installed: the wordnet concept source will say how"
echo "[setup] done: $("$PY" -c 'import torch, ray; print(f"torch {torch.__version__}, ray {ray.__version__}")')"
