"""The backends that run an engine directory's components, one module each, behind one Runner protocol (base.py):
ONNX Runtime on the CPU or CUDA (ort.py), OpenVINO on the CPU (openvino.py), TensorRT plans, full or lean
(tensorrt.py), with the CUDA driver queries they and the exporter share (cuda_driver.py). selection.py resolves
``backend=`` and builds the runners. The Torch backend needs torch, so it lives in
``contextdiff_ref.pipelines.torch_runner``. Importing this package imports no backend library.
"""
