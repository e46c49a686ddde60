#!/usr/bin/env bash
# Download the wheels the GPU check needs beyond a GPU machine's own packages (made for the lent GPU image: Python
# 3.12 with torch, CuPy, onnx, onnxscript, onnxruntime, transformers, tokenizers, safetensors; no diffusers,
# Polygraphy or TensorRT), at the versions constraints.txt pins. Usage: bash benchmarks/gpu_wheels.sh [DEST] [PYVER]
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
pyver=${2:-3.12}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -c constraints.txt -d "$dest" diffusers polygraphy onnxconverter-common importlib-metadata
ls -l "$dest"
