"""Text-to-video editing (method doc §7), reference PyTorch: the moving-shapes video set and its measures, the
inflated UNet and the video adapter, the video model directory, one-shot tuning and VideoEditPipeline."""
