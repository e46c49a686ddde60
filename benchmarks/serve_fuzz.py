"""Property-based fuzzing of the live image service with Schemathesis, from the OpenAPI schema it publishes:
every check (no 5xx, status codes, content types, headers and bodies as documented, schema-valid requests accepted,
schema-invalid ones refused), bounded in examples and time. Writes Schemathesis' report and a JSON summary.
``POST /v1/images/edits`` may refuse a schema-valid body with 422 (:data:`CONFIG`).

    python -m benchmarks.serve_fuzz --engines engines/shapes-contextdiff-b8    # starts Ray and the service itself
    python -m benchmarks.serve_fuzz --url http://127.0.0.1:8000                # a service already running
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime.cli import Parser, setup_logging
from runtime.files import atomic_write_json, atomic_write_text

logger = logging.getLogger("benchmarks.serve_fuzz")


# The edit endpoint's schema bounds every field but cannot say which strings are base64 PNGs of a size the engines
# take, nor the rules between fields (source_prompt only with mode invert, region_noise only with a mask): such
# schema-valid bodies get a 422 naming the field, by design: the check that schema-valid bodies are accepted takes 422
# there too (Schemathesis' default statuses and 422). Every other check applies to it as to the other operations.
CONFIG = """[[operations]]
include-path = "/v1/images/edits"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
"""


def fuzz_command(url: str, max_examples: int, seed: int, config_file: str = "schemathesis.toml") -> list[str]:
    """The Schemathesis command line (as committed with its result; ``config_file`` holds :data:`CONFIG`). Bounded by
    --max-examples per operation and phase (Schemathesis' --max-time would instead repeat fuzzing until the time is
    spent); the time bound is ours."""
    return ["schemathesis", "--config-file", config_file, "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", str(max_examples),
            "--seed", str(seed), "--workers", "1", "--request-timeout", "120", "--no-color"]  # fmt: skip


def run_fuzz(url: str, max_examples: int, max_time_s: int, seed: int) -> dict[str, Any]:
    command = fuzz_command(url, max_examples, seed)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as scratch:  # Schemathesis keeps a cache in its working directory: not in the checkout
            atomic_write_text(Path(scratch) / "schemathesis.toml", CONFIG)
            done = subprocess.run(command, capture_output=True, text=True, timeout=max_time_s, check=False, cwd=scratch)  # a failed check is a result
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = f"{exc.stdout or ''}{exc.stderr or ''}\nstopped after --max-time={max_time_s} s", 124
    cases = re.search(r"(\d+) generated, (.*)", output)
    output = output.decode(errors="replace") if isinstance(output, bytes) else output
    return dict(command=" ".join(command), config=CONFIG, exit_code=code, passed=code == 0, wall_s=round(time.perf_counter() - start, 1),
                test_cases=cases.group(0).strip() if cases else None, output=output)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.serve_fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running service; default: start one on --engines")
    p.add_argument("--engines", type=Path, default=Path("engines/shapes-contextdiff-b8"), help="engine directory when starting the service")
    p.add_argument("--max-examples", type=int, default=50, help="examples per operation and phase (default: %(default)s)")
    p.add_argument("--max-time", type=int, default=600, help="stop Schemathesis after this many seconds (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--port", type=int, default=8124)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serve-fuzz.json"))
    args = p.parse_args(argv)
    if args.max_examples < 1 or args.max_time < 1:
        p.error(f"--max-examples={args.max_examples} / --max-time={args.max_time}: both must be at least 1")
    if shutil.which("schemathesis") is None:
        p.error("schemathesis is not installed: pip install -e '.[test]'")
    if args.url is None and not (args.engines / "manifest.json").is_file():
        p.error(f"--engines={args.engines}: no engine directory (python export/build_engines.py --batch 8 --out {args.engines})")
    setup_logging()
    from benchmarks.serve_load import local_serve

    service = contextlib.nullcontext({"url": args.url}) if args.url else local_serve({"url": dict(engines=str(args.engines), num_cpus=0.5)}, args.port)
    with service as urls:
        result = run_fuzz(urls["url"], args.max_examples, args.max_time, args.seed)
    result["service"] = args.url or f"local Ray Serve on {args.engines}"
    atomic_write_text(args.out.with_suffix(".txt"), result.pop("output"))
    atomic_write_json(args.out, result)
    logger.info("%s: %s (exit %d); report %s", result["command"], result["test_cases"], result["exit_code"], args.out.with_suffix(".txt"))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
