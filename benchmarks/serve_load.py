"""Load test of the image service over HTTP (loopback), bounded in requests and time: latency percentiles,
throughput, mean batch size, errors by status. Writes JSON and prints a markdown table.

    python -m benchmarks.serve_load --url http://127.0.0.1:8000 --concurrency 16 --requests 64
    python -m benchmarks.serve_load --compare --engines engines/shapes-contextdiff-b8   # starts Ray itself: batched vs
        one-at-a-time serving at concurrency 1, 4, 16 (interleaved), then one overload run past the queue limits

Every request carries its own seed. A request is *failed* when it gets any status but 200 (503 counted apart: the
service's backpressure), *lost* when it gets no answer within --timeout.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import json
import logging
import os
import platform
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from benchmarks.harness import percentiles, render_table
from runtime.cli import Parser, setup_logging
from runtime.files import atomic_write_json

logger = logging.getLogger("benchmarks.serve_load")
PROMPTS = ("a red circle at the top left", "a blue square at the bottom right", "a green triangle at the top right",
           "a yellow circle at the bottom left and a red square at the top right")  # fmt: skip


def _one(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}/v1/images", data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            reply = json.loads(r.read())
            return dict(status=r.status, latency_s=time.perf_counter() - start, batch_images=reply["batch_images"], engine_ms=reply["engine_ms"])
    except urllib.error.HTTPError as e:
        e.read()
        return dict(status=e.code, latency_s=time.perf_counter() - start, retry_after=e.headers.get("Retry-After"))
    except (OSError, ValueError) as e:  # no answer in time, connection refused or reset
        return dict(status=None, latency_s=time.perf_counter() - start, error=f"{type(e).__name__}: {e}")


def run_load(url: str, concurrency: int, requests: int, *, steps: int = 50, time_limit_s: float = 600.0, timeout_s: float = 300.0,
             seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """``requests`` requests from ``concurrency`` clients (each sends its next request when the last is answered);
    stops starting new ones after ``time_limit_s``. Returns the summary (see the module doc)."""
    counter, lock, results = itertools.count(), threading.Lock(), []
    deadline = time.perf_counter() + time_limit_s

    def client() -> None:
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter)
            if i >= requests:
                return
            body = dict(prompt=PROMPTS[i % len(PROMPTS)], seed=seed + i, num_inference_steps=steps)
            outcome = _one(url, body, timeout_s)
            with lock:
                results.append(outcome)

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - start
    return summarize(results, wall, concurrency=concurrency, requests=requests, steps=steps)


def summarize(results: list[dict[str, Any]], wall_s: float, **settings: Any) -> dict[str, Any]:
    ok = [r for r in results if r["status"] == 200]
    latencies = np.array([r["latency_s"] for r in ok]) if ok else np.array([np.nan])
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return dict(
        **settings, sent=len(results), ok=len(ok), status_counts=statuses,
        failed=sum(1 for r in results if r["status"] not in (200, 503, None)), rejected_503=statuses.get("503", 0),
        lost=statuses.get("None", 0), wall_s=round(wall_s, 3), throughput_rps=round(len(ok) / wall_s, 4) if wall_s else None,
        **percentiles(latencies, digits=4), max_s=round(float(latencies.max()), 4),
        mean_batch_images=round(float(np.mean([r["batch_images"] for r in ok])), 3) if ok else None,
        retry_after=sorted({r.get("retry_after") for r in results if r["status"] == 503} - {None}),
    )  # fmt: skip


def _table(rows: list[dict[str, Any]]) -> str:
    header = ["serving", "concurrency", "requests", "ok", "503", "failed / lost", "throughput (req/s)", "p50 s", "p90 s", "p99 s", "mean batch"]
    return render_table(header, [[r.get("serving", ""), r["concurrency"], r["sent"], r["ok"], r["rejected_503"], f"{r['failed']} / {r['lost']}",
                                    f"{r['throughput_rps']:.2f}", f"{r['p50_s']:.2f}", f"{r['p90_s']:.2f}", f"{r['p99_s']:.2f}", r["mean_batch_images"]]
                                   for r in rows])  # fmt: skip


def _wait_ready(url: str, limit_s: float = 120) -> None:
    deadline = time.time() + limit_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not ready within {limit_s} s")


@contextlib.contextmanager
def local_serve(apps: dict[str, dict[str, Any]], port: int) -> Iterator[dict[str, str]]:
    """A local Ray instance (no dashboard) serving one application per ``apps`` entry (name -> serving config args),
    each under its own route prefix; yields name -> base URL once all are ready; shuts Ray down after."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from serving.deployment import build_app

    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        urls = {}
        for i, (name, args) in enumerate(apps.items()):
            serve.run(build_app(args), name=f"app{i}", route_prefix=f"/app{i}")
            urls[name] = f"http://127.0.0.1:{port}/app{i}"
            _wait_ready(urls[name])
        yield urls
    finally:
        serve.shutdown()
        ray.shutdown()


def compare(engines: Path, concurrencies: list[int], requests: int, steps: int, time_limit_s: float, port: int,
            backend: str = "auto") -> dict[str, Any]:  # fmt: skip
    """Batched vs one-at-a-time serving on a local Ray instance (two applications, loaded once, run interleaved),
    then an overload run on the batched one."""
    from serving.config import ServiceConfig

    base = dict(engines=str(engines), backend=backend, num_cpus=0.5, max_steps=max(steps, 100))
    apps = {"batched": dict(base), "one at a time": dict(base, max_batch_images=1)}
    limits = ServiceConfig.parse(apps["batched"])
    rows = []
    with local_serve(apps, port) as urls:
        for url in urls.values():
            run_load(url, 1, 2, steps=steps)  # warm-up
        for c in concurrencies:
            for name, url in urls.items():
                row = dict(serving=name, **run_load(url, c, requests, steps=steps, time_limit_s=time_limit_s))
                logger.info("%s, concurrency %d: %.2f req/s, p99 %.2f s, mean batch %s, status %s", name, c, row["throughput_rps"],
                            row["p99_s"], row["mean_batch_images"], row["status_counts"])  # fmt: skip
                rows.append(row)
        past = 2 * (limits.max_ongoing_requests + limits.max_queued_requests)
        overload = dict(serving="batched, past the limits", **run_load(urls["batched"], past, 2 * past, steps=20, time_limit_s=time_limit_s))
        logger.info("overload at concurrency %d: status %s", past, overload["status_counts"])
    return dict(rows=rows, overload=overload, backend=backend, limits=dict(max_ongoing_requests=limits.max_ongoing_requests,
                                                                           max_queued_requests=limits.max_queued_requests))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running service (default: %(default)s)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[16], help="clients at once; several values: one run each")
    p.add_argument("--requests", type=int, default=64, help="requests per run (default: %(default)s)")
    p.add_argument("--steps", type=int, default=50, help="num_inference_steps of every request (default: %(default)s)")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds after which a run starts no new request (default: %(default)s)")
    p.add_argument("--compare", action="store_true", help="start Ray here and compare batched with one-at-a-time serving")
    p.add_argument("--engines", type=Path, default=None, help="engine directory for --compare (built with --batch 8)")
    p.add_argument("--backend", default="auto", help="runtime.Generator backend of the --compare services (default: %(default)s)")
    p.add_argument("--port", type=int, default=8123, help="HTTP port for --compare (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="JSON to write")
    args = p.parse_args(argv)
    for name in ("requests", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name}={getattr(args, name)}: must be at least 1")
    if any(c < 1 for c in args.concurrency):
        p.error(f"--concurrency={args.concurrency}: every value must be at least 1")
    if args.time_limit <= 0:
        p.error(f"--time-limit={args.time_limit}: must be positive")
    if args.compare and (args.engines is None or not (args.engines / "manifest.json").is_file()):
        p.error(f"--engines={args.engines}: --compare needs an engine directory (python export/build_engines.py --batch 8 --out DIR)")
    setup_logging()
    if args.compare:
        result = compare(args.engines, args.concurrency, args.requests, args.steps, args.time_limit, args.port, args.backend)
        rows = result["rows"] + [result["overload"]]
    else:
        rows = [dict(serving=args.url, **run_load(args.url, c, args.requests, steps=args.steps, time_limit_s=args.time_limit)) for c in args.concurrency]
        result = dict(rows=rows)
    result["machine"] = dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(), python=sys.version.split()[0])
    print(_table(rows))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
