"""The load-test script against a real HTTP server on loopback (uvicorn serving the service's app in a thread; Ray
Serve itself is exercised in tests/serving/test_ray.py), and the bad-option errors of both serving benchmarks."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from benchmarks import serve_fuzz, serve_load


@pytest.fixture(scope="module")
def http_service(pixel_fp32_dir):
    import uvicorn

    from serving.app import create_app, direct_submit
    from serving.config import ServiceConfig
    from serving.service import ImageService

    service = ImageService(ServiceConfig(engines=str(pixel_fp32_dir)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service, direct_submit(service)), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.mark.slow
def test_run_load_counts_every_request(http_service):
    result = serve_load.run_load(http_service, concurrency=3, requests=7, steps=2, time_limit_s=120)
    assert result["sent"] == result["ok"] == 7 and result["failed"] == result["lost"] == result["rejected_503"] == 0
    assert result["mean_batch_images"] == 1.0 and 0 < result["p50_s"] <= result["p90_s"] <= result["p99_s"] <= result["max_s"]
    assert result["throughput_rps"] > 0 and result["status_counts"] == {"200": 7}


def test_unreachable_service_counts_as_lost():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    result = serve_load.run_load(f"http://127.0.0.1:{port}", concurrency=2, requests=3, steps=2, timeout_s=5)
    assert result["lost"] == 3 and result["ok"] == 0


@pytest.mark.parametrize(
    "module, argv, named",
    [
        (serve_load, ["--concurrency", "4", "0"], "--concurrency"),
        (serve_load, ["--requests", "0"], "--requests"),
        (serve_load, ["--compare", "--engines", "no-such-dir"], "--engines"),
        (serve_fuzz, ["--max-examples", "0"], "--max-examples"),
        (serve_fuzz, ["--engines", "no-such-dir"], "--engines"),
    ],
)
def test_bad_options_exit_2_naming_them(module, argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2 and named in capsys.readouterr().err
