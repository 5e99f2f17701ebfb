#!/usr/bin/env bash
# Create .venv in the repo root and install qsft with everything it needs (idempotent).
# CPU torch when no NVIDIA GPU is present; Debian's stockfish for the chess environment and a Java runtime
# (default-jre-headless, when no `java` is on PATH) for the twx-* and sciworld-* environments' engines; the
# `robotics` extra (Meta-World, MuJoCo inside its wheel) for the metaworld-* environments.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if [ ! -x /usr/games/stockfish ] && ! command -v stockfish >/dev/null 2>&1; then
  echo "[setup] installing Debian package stockfish"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stockfish >/dev/null
fi

if ! command -v java >/dev/null 2>&1; then
  echo "[setup] installing Debian package default-jre-headless (Java for TextWorldExpress and ScienceWorld)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
[ -f .venv/.qsft-installed ] || $PIP install -q --upgrade pip setuptools wheel

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "[setup] GPU found: installing torch (CUDA build)"
    $PIP install -q "torch>=2.4,<3"
  else
    echo "[setup] no GPU: installing CPU torch 2.13.0"
    # 2.13.0 is the CPU build these machines carry on local disk; elsewhere pip finds a compatible one
    $PIP install -q "torch==2.13.0" || $PIP install -q "torch>=2.4,<3"
  fi
fi

# Re-running is cheap: skip the install when pyproject.toml is unchanged since the last one.
STAMP=.venv/.qsft-installed
WANT=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] || ! .venv/bin/python -c "import qsft" >/dev/null 2>&1; then
  echo "[setup] installing qsft and its dependencies"
  $PIP install -q -e ".[dev,engines,robotics]"
  echo "$WANT" > "$STAMP"
fi
echo "[setup] done: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
