"""The service's settings: ``args`` of ``serving/config.yaml`` (or ``python -m serving``'s options), validated once.

Engine and batching settings reach each replica; replica count, resources, queue limits and autoscaling become the
Ray Serve deployment's options (``serving.deployment.build_app``). A bad value is a one-line ``ConfigError`` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runtime import DEFAULT_MODEL_NAME
from runtime.errors import ConfigError

DEFAULT_SERVING_ENGINES = f"engines/{DEFAULT_MODEL_NAME}-b8"  # `python export/build_engines.py --batch 8 --out <this>`


class Autoscaling(BaseModel):
    """Ray Serve autoscaling: replicas between ``min_replicas`` and ``max_replicas``, aiming at
    ``target_ongoing_requests`` in flight per replica."""

    model_config = ConfigDict(extra="forbid")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas={self.min_replicas} must not exceed max_replicas={self.max_replicas}")
        return self


class LoraEntry(BaseModel):
    """A LoRA a request may name: its safetensors file (relative to the working directory) and scale."""

    model_config = ConfigDict(extra="forbid")
    file: str
    scale: float = Field(1.0, allow_inf_nan=False)


class ServiceConfig(BaseModel):
    """What one deployment of the service runs and how much it accepts."""

    model_config = ConfigDict(extra="forbid")
    engines: str = Field(DEFAULT_SERVING_ENGINES, description="engine directory (python export/build_engines.py); relative to the working directory")
    backend: str = Field("auto", description="runtime.Generator backend: auto, tensorrt, onnxruntime, onnxruntime-cuda, onnxruntime-cpu, openvino")
    num_replicas: int = Field(1, ge=1, description="replicas when autoscaling is off")
    autoscaling: Autoscaling | None = None
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (1 for TensorRT / ONNX Runtime CUDA engines)")
    max_batch_images: int | None = Field(None, ge=1, description="images per engine call; None: what the engines' batch profile allows")
    batch_wait_timeout_s: float = Field(0.05, ge=0, le=10, description="how long a batch waits to fill")
    max_ongoing_requests: int = Field(32, ge=1, description="requests a replica holds at once (in a batch or waiting for one)")
    max_queued_requests: int = Field(64, ge=0, description="requests waiting for a replica; past it: 503 with Retry-After")
    retry_after_s: float = Field(2.0, ge=0, description="Retry-After of a 503")
    request_timeout_s: float = Field(120.0, gt=0, description="a request still waiting after this gets 504")
    max_steps: int = Field(100, ge=1, le=1000, description="most num_inference_steps a request may ask for")
    graceful_shutdown_timeout_s: float = Field(120.0, ge=0, description="how long a stopping replica finishes in-flight requests")
    loras: dict[str, LoraEntry] = Field(default_factory=dict, description="LoRAs a request may name (its lora field): name -> file, scale; "
                                        "checked at start; requests with different LoRAs are never batched together")  # fmt: skip

    @property
    def engine_dir(self) -> Path:
        return Path(self.engines).expanduser().resolve()

    @classmethod
    def parse(cls, args: Mapping[str, Any] | None) -> ServiceConfig:
        """``args`` (a config file's mapping) -> config; any problem is one ConfigError naming the field."""
        try:
            return cls.model_validate(dict(args or {}))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}={e.get('input')!r}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid serving config: {problems}") from None
