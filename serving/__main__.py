"""``python -m serving [--config serving/config.yaml] [--engines DIR] [--port N]``: the image service on a local Ray
instance without the dashboard (lighter than ``serve run``), until Ctrl-C or SIGTERM; then in-flight requests finish
(``graceful_shutdown_timeout_s``) and Ray stops."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from runtime.cli import CLI_ERRORS, Parser, error_exit, setup_logging

CONFIG = Path(__file__).with_name("config.yaml")


def load_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(http_options, the first application's args) of a Serve config file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        app = data["applications"][0]
        return dict(data.get("http_options") or {}), dict(app.get("args") or {})
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise SystemExit(f"error: --config={path}: not a readable Serve config with an `applications` list ({type(exc).__name__}: {exc})") from None


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m serving", description="Serve runtime.Generator over HTTP with Ray Serve (dynamic batching, backpressure).")
    p.add_argument("--config", type=Path, default=CONFIG, help="Serve config file (default: %(default)s)")
    p.add_argument("--engines", default=None, help="engine directory (default: the config's)")
    p.add_argument("--host", default=None, help="default: the config's http_options.host")
    p.add_argument("--port", type=int, default=None, help="default: the config's http_options.port")
    args = p.parse_args(argv)
    setup_logging()
    http, app_args = load_config(args.config)
    if args.engines:
        app_args["engines"] = args.engines
    host, port = args.host or http.get("host", "127.0.0.1"), args.port or http.get("port", 8000)
    if not 0 < port < 65536:
        p.error(f"--port={port}: a TCP port from 1 to 65535")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from runtime.errors import ContextDiffError
    from serving.deployment import APP_NAME, build_app

    try:
        app = build_app(app_args)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ray.init(include_dashboard=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/")
        print(f"serving {app_args.get('engines')} on http://{host}:{port} (API: http://{host}:{port}/docs); Ctrl-C stops", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
