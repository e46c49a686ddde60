"""HTTP serving of ``runtime.Generator`` on Ray Serve: a FastAPI ingress, dynamic batching across requests
(``@serve.batch``), backpressure, and metrics. Data flows engine directory → runtime → this package → clients.

- :mod:`serving.config` — the service's settings (what ``serving/config.yaml`` passes as ``args``).
- :mod:`serving.schema` — request and response models, sized from the engine directory (exact OpenAPI).
- :mod:`serving.service` — the engine side, no Ray: validation through the Generator, grouping and running batches.
- :mod:`serving.app` — the FastAPI routes and error mapping over a service and a submit function.
- :mod:`serving.deployment` — the Ray Serve deployment and ``build_app`` (the config's import path).

Install with ``pip install -e ".[serve]"``; start with ``python -m serving`` or ``serve run serving/config.yaml``.
"""
