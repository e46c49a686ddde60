"""Reference sampling: ContextDiffPipeline (text to image, and DDIM inversion) and the Torch backend of
runtime.Generator."""
