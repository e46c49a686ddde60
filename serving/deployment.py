"""The Ray Serve deployment: one replica holds one ``runtime.Generator`` (engines loaded before it takes traffic) and
joins concurrent requests into engine calls with ``@serve.batch``; ``build_app`` is the config's import path.

Serve provides the rest: the HTTP proxy, replicas and autoscaling, ``max_ongoing_requests`` per replica and
``max_queued_requests`` in front of them (past it: 503 with Retry-After), cancellation when a client disconnects
(a cancelled request still waiting is left out of its batch), graceful shutdown (in-flight requests finish), and the
Prometheus metrics endpoint, where this service adds its own (:class:`ServiceMetrics`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Mapping

from ray import serve
from ray.serve.metrics import Counter, Histogram

from runtime.errors import ConfigError
from serving.app import create_app
from serving.config import ServiceConfig
from serving.service import BatchStats, ImageService, Job, JobResult

logger = logging.getLogger(__name__)
APP_NAME = "contextdiff"


class ServiceMetrics:
    """The service's own metrics (exported with Serve's, Prometheus format): images generated, time requests waited
    before their engine call, images per engine call, engine time."""

    def __init__(self) -> None:
        ms = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]
        self.images = Counter("contextdiff_images_generated", description="images generated")
        self.queue_wait = Histogram("contextdiff_queue_wait_ms", description="arrival to engine call, per request", boundaries=ms)
        self.batch_images = Histogram("contextdiff_batch_images", description="images per engine call", boundaries=[1, 2, 4, 8, 16, 32, 64])
        self.engine_time = Histogram("contextdiff_engine_ms", description="time of one engine call", boundaries=ms)

    def record(self, stats: BatchStats) -> None:
        self.images.inc(stats.images)
        self.batch_images.observe(stats.images)
        self.engine_time.observe(stats.engine_s * 1e3)
        for wait in stats.queue_waits_s:
            self.queue_wait.observe(wait * 1e3)


def _images(jobs: list[Job]) -> int:
    """serve.batch's batch size: images, not requests (the engines' profile counts images)."""
    return sum(j.images for j in jobs)


@serve.deployment(name="ContextDiffImages")
@serve.ingress()
class ImageDeployment:
    def __init__(self, config: Mapping[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        self.config = ServiceConfig.parse(config)
        self.metrics = ServiceMetrics()
        self.service = ImageService(self.config, on_batch=self.metrics.record)
        self.generate.set_max_batch_size(self.service.max_batch_images)
        self.generate.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        logger.info("serving %s: %s backend, up to %d image(s) per engine call", self.config.engine_dir, self.service.generator.backend,
                    self.service.max_batch_images)  # fmt: skip

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.service, self.generate)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05, batch_size_fn=_images)
    async def generate(self, jobs: list[Job]) -> list[JobResult | BaseException | None]:
        """Jobs that arrived together -> one engine call per compatible group (ImageService.run_jobs), off the event
        loop so health checks and new requests keep flowing."""
        return await asyncio.to_thread(self.service.run_jobs, jobs)

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose engines are gone is restarted."""
        if not self.service.generator.runners:
            raise RuntimeError("the replica's engines are not loaded")


def deployment_options(config: ServiceConfig) -> dict[str, Any]:
    """The Serve deployment options the config asks for."""
    options: dict[str, Any] = dict(
        ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": config.retry_after_s},
        graceful_shutdown_timeout_s=config.graceful_shutdown_timeout_s,
    )
    if config.autoscaling is not None:
        options["autoscaling_config"] = config.autoscaling.model_dump()
    else:
        options["num_replicas"] = config.num_replicas
    return options


def build_app(args: Mapping[str, Any] | None = None) -> serve.Application:
    """The application for ``serve run serving/config.yaml`` (its ``args``) and ``python -m serving``. Checks the
    config and that the engine directory exists before anything is deployed (the path is made absolute here)."""
    config = ServiceConfig.parse(args)
    if not (config.engine_dir / "manifest.json").is_file():
        raise ConfigError(f"invalid serving config: engines={config.engines!r}: no engine directory at {config.engine_dir}; build one with "
                          f"`python export/build_engines.py --batch 8 --out {config.engines}`")  # fmt: skip
    if config.max_batch_images is not None and config.max_ongoing_requests < config.max_batch_images:
        raise ConfigError(f"invalid serving config: max_ongoing_requests={config.max_ongoing_requests}: at least max_batch_images="
                          f"{config.max_batch_images}, or a replica never holds a full batch")  # fmt: skip
    resolved = config.model_copy(update={"engines": str(config.engine_dir)})
    return ImageDeployment.options(**deployment_options(config)).bind(resolved.model_dump(mode="json"))
