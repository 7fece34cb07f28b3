#!/usr/bin/env bash
# One-shot set-up for a fresh Debian machine: system packages, a virtualenv in .venv, and this package.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(ffmpeg codec2-examples opencv-data chromium flite)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3.11}
# pip, not python: a `venv` that failed (no ensurepip) leaves bin/python behind without pip; re-run it then
[ -x .venv/bin/pip ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade "pip>=24" "setuptools>=68" wheel
# torch first: deepspeed's sdist imports it at build time, so the package installs without build isolation.
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q --no-build-isolation -e ".[dev]"
echo "setup done: $(.venv/bin/python -c 'import torch, ray, deepspeed; print("torch", torch.__version__, "ray", ray.__version__, "deepspeed", deepspeed.__version__)')"
