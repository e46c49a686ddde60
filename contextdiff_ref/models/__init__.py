"""The reference models and their directories: the context adapter, the model-directory format (load, save, check),
tokenisation, the graphs exported to ONNX, model builders (tiny seeded, SD-1.5-class, the shapes model, adapters
attached to a Stable Diffusion directory) and the shipped model directories (``shapes-contextdiff/``)."""
