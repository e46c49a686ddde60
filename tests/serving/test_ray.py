"""The service on a real local Ray instance over HTTP (num_cpus=2, a small object store; started and shut down
here, about half a minute): Serve's dynamic batching gives each request its own images, the bounded queue answers
503 with Retry-After, and a deleted application finishes its in-flight requests."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
import ray  # the test extra installs ray[serve]: a broken import fails, it does not skip
from PIL import Image
from ray import serve

from runtime.generator import Generator

PROMPT = "a red circle at the top left"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 120) -> tuple[int, Any, dict]:
    """(status, headers (case-insensitive), JSON body or {'text': ...})."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        return e.code, e.headers, json.loads(text) if e.headers.get_content_type() == "application/json" else {"text": text}


@pytest.fixture(scope="module")
def local_serve():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    port = _free_port()
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_each_gets_its_own_images(local_serve, pixel_fp32_dir):
    from serving.deployment import build_app

    serve.run(build_app(dict(engines=str(pixel_fp32_dir), num_cpus=0.5, batch_wait_timeout_s=0.5)), name="batched", route_prefix="/batched")
    url = f"{local_serve}/batched/v1/images"
    bodies = [dict(prompt=PROMPT if i % 2 else "a blue square", seed=i, num_inference_steps=8, eta=0.5) for i in range(6)]
    with cf.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda b: post(url, b), bodies))
    assert [status for status, _, _ in replies] == [200] * 6, replies
    assert max(reply["batch_images"] for _, _, reply in replies) > 1  # requests shared engine calls
    gen = Generator.from_dir(pixel_fp32_dir)
    for body, (_, headers, reply) in zip(bodies, replies):
        alone = gen(body["prompt"], seed=body["seed"], num_inference_steps=8, eta=0.5, progress=False).images[0]
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(reply["images"][0]))))
        np.testing.assert_array_equal(got, np.round(alone * 255).astype(np.uint8))
        assert reply["seed"] == body["seed"] and headers.get("X-Seed") == str(body["seed"])
    status, _, bad = post(url, dict(prompt=PROMPT, eta=3))
    assert status == 422 and bad["error"]["field"] == "eta"
    with urllib.request.urlopen(f"{local_serve}/batched/docs", timeout=30) as r:  # /docs under the route prefix, offline
        page = r.read().decode()
    assets = re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", page)
    assert len(assets) == 3 and all(a.startswith("/batched/docs/assets/") for a in assets) and "'/batched/openapi.json'" in page, assets
    for asset in assets:
        with urllib.request.urlopen(f"{local_serve}{asset}", timeout=30) as r:
            assert r.status == 200 and len(r.read()) > 500
    serve.delete("batched")


@pytest.mark.slow
def test_past_the_queue_limit_requests_get_503_with_retry_after(local_serve, pixel_fp32_dir):
    from serving.deployment import build_app

    tight = dict(engines=str(pixel_fp32_dir), num_cpus=0.5, max_batch_images=1, max_ongoing_requests=1, max_queued_requests=1, retry_after_s=3,
                 max_steps=1000, graceful_shutdown_timeout_s=60)  # fmt: skip
    serve.run(build_app(tight), name="tight", route_prefix="/tight")
    url = f"{local_serve}/tight/v1/images"
    slow = dict(prompt=PROMPT, num_inference_steps=150, seed=0)  # about 5.5 s here (2.2 s at 60 steps)
    start = time.monotonic()

    def post_after(delay_s: float) -> tuple[int, Any, dict, float]:
        time.sleep(delay_s)
        return *post(url, slow), time.monotonic() - start

    # Serve's queue check is approximate when requests arrive in the same instant (its router checks the count, then
    # awaits, then increments: three of eight simultaneous requests were once let in). So the arrivals are staggered:
    # the first runs on the replica, the second waits in the queue, then six arrive at once and find both places full.
    delays = [0.0, 1.0] + [2.0] * 6
    with cf.ThreadPoolExecutor(len(delays)) as pool:
        replies = list(pool.map(post_after, delays))
    first_done_s = replies[0][3]
    assert first_done_s > 2.5, f"the first request finished after {first_done_s:.1f} s, before the last six arrived: no test"
    statuses = [status for status, _, _, _ in replies]
    assert statuses == [200, 200] + [503] * 6, statuses
    assert all(headers.get("Retry-After") == "3" for status, headers, _, _ in replies if status == 503)
    assert all(done_s < first_done_s for _, _, _, done_s in replies[2:]), "503 comes at once, not after a wait"

    # Graceful shutdown: deleting the application lets the request in flight finish.
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(reply=post(url, slow)))
    worker.start()
    time.sleep(2.0)  # the request is in the replica (it takes about 5.5 s)
    serve.delete("tight")
    worker.join(timeout=120)
    assert result["reply"][0] == 200, result
