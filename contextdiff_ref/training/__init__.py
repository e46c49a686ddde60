"""Training: the objective of method doc §3–4, the resumable-run loop every trainer shares, the shapes trainer and
fine-tuning from a Stable Diffusion checkpoint."""
