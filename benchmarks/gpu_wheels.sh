#!/usr/bin/env bash
# Download the wheels the GPU check imports beyond the lent GPU image's own packages (Python 3.12, torch 2.11 built
# for CUDA 13, cupy-cuda13x, onnx, onnxruntime's CPU build, transformers 5, accelerate, peft; no diffusers, no
# TensorRT, no network), at the version constraints.txt pins. Only diffusers: the baseline and the reference pipeline
# import it. Not needed there, because only the Torch backend runs on that image: polygraphy (imported only by the
# TensorRT build, export/tensorrt_build.py) and onnxconverter-common (only by the fp16 ONNX export and its weight map,
# export/onnx_export.py and export/weight_map.py); importlib-metadata (diffusers imports it only on Python < 3.8).
# diffusers' own dependencies (huggingface-hub, safetensors, regex, requests, filelock, Pillow) come with
# transformers on that image. Usage: bash benchmarks/gpu_wheels.sh [DEST] [PYVER]
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
pyver=${2:-3.12}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -c constraints.txt -d "$dest" diffusers
ls -l "$dest"
