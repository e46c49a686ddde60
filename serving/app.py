"""The HTTP API (FastAPI) over an ImageService and a ``submit`` coroutine that runs a job — through Ray Serve's
dynamic batching in the deployment, directly in tests.

No request gets a 5xx for bad input: the body is checked against the schema (strict types, ranges, enums, sizes the
engines take), then by the Generator's own rules; either failure is a 422 naming the field, its value and what is
allowed. Past the queue limits Ray Serve answers 503 with Retry-After (text); a request still waiting after
``request_timeout_s`` gets 504. Only an engine failure is a 500.
"""

# No `from __future__ import annotations` here: FastAPI reads the route's body type (built per engine directory) from
# its annotation at runtime.
import asyncio
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable

import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from runtime import __version__
from runtime.errors import InvalidArgumentError
from serving.schema import ErrorResponse, ImagesResponse, ModelInfo, ResponseFormat, Status
from serving.service import ImageService, Job, JobResult

logger = logging.getLogger(__name__)

Submit = Callable[[Job], Awaitable["JobResult | BaseException | None"]]
# /docs works offline: Swagger UI's script, stylesheet and icon come from the swagger-ui-bundle package, not a CDN.
DOCS_ASSETS = Path(swagger_ui_bundle.swagger_ui_path)
DOCS_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}
_HEADERS = {
    "X-Seed": {"description": "the seed the images came from", "schema": {"type": "integer", "minimum": 0}},
    "X-Batch-Images": {"description": "images in the engine call that served the request", "schema": {"type": "integer", "minimum": 1}},
}


def error(status: int, allowed: str, message: str, field: str | None = None, value: Any = None, headers: dict | None = None) -> JSONResponse:
    body = ErrorResponse(error=dict(field=field, value=value, allowed=allowed, message=message))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _json_value(value: Any) -> Any:
    """A rejected value as JSON can carry it (bytes and other objects as their repr, shortened)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value if not isinstance(value, str) or len(value) <= 200 else value[:197] + "..."
    if isinstance(value, (list, dict)):
        text = repr(value)
        return value if len(text) <= 200 else text[:197] + "..."
    return repr(value)[:200]


BODY_ALLOWED = "a JSON object (Content-Type: application/json) matching the schema (GET /openapi.json)"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":  # its loc is ("body", character offset): not a field
        position = first.get("loc", ("body", "?"))[-1]
        reason = (first.get("ctx") or {}).get("error", "not JSON")
        return error(422, BODY_ALLOWED, f"invalid body: JSON decode error at position {position} ({reason})", "body")
    content_type = request.headers.get("content-type", "")
    if isinstance(first.get("input"), (bytes, bytearray)) or (content_type and "json" not in content_type):
        shown = content_type or "none"
        return error(422, BODY_ALLOWED, f"invalid body: expected application/json, got Content-Type {shown}", "body")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or None
    value = _json_value(first.get("input"))
    if value == {} or first.get("type") == "json_invalid":
        value = None
    message = f"invalid {field or 'request body'}: {first.get('msg')}"
    return error(422, first.get("msg", "a body matching the schema (GET /openapi.json)"), message, field, value)


async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own refusals (a body it cannot parse: 400; unknown path: 404; method: 405, with Allow) in the same
    error format."""
    return error(exc.status_code, "a request the API documents (GET /openapi.json)", str(exc.detail), headers=exc.headers)


def create_app(service: ImageService, submit: Submit) -> FastAPI:
    """The API for ``service``; ``submit`` runs one job to its result (batched with others by whoever provides it)."""
    Body, EditBody = service.request_model, service.edit_request_model
    timeout = service.config.request_timeout_s
    app = FastAPI(
        title="ContextDiff image service", version=__version__, docs_url=None, redoc_url=None,
        description="Text-to-image generation and image edits with ContextDiff engines (runtime.Generator) behind Ray Serve, batched across requests.",
    )  # fmt: skip
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    errors = {400: {"model": ErrorResponse, "description": "a body that cannot be parsed as JSON text"},
              422: {"model": ErrorResponse, "description": "a field the service does not accept (named in the error)"}}

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # the app's route prefix (Ray Serve's route_prefix)
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API docs",
                                   swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js", swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png")  # fmt: skip

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in DOCS_FILES:
            return error(404, f"one of {', '.join(DOCS_FILES)}", f"no docs asset {name!r}", "name", _json_value(name))
        return FileResponse(DOCS_ASSETS / name, media_type=DOCS_FILES[name])

    @app.get("/healthz", response_model=Status, summary="Liveness")
    async def healthz() -> Status:
        return Status(status="ok")

    @app.get("/readyz", response_model=Status, summary="Readiness: the engines are loaded")
    async def readyz() -> Status:
        return Status(status="ready")

    @app.get("/v1/model", response_model=ModelInfo, summary="What the engine directory holds and the sizes it serves")
    async def model() -> ModelInfo:
        return service.model_info()

    responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "headers": _HEADERS,
              "description": "JSON with base64 PNGs (response_format json) or the PNG itself (png)"},
        **errors,
        500: {"model": ErrorResponse, "description": "the engines failed (not the request's fault)"},
        503: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "queue full: retry after Retry-After seconds",
              "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 0}}}},
        504: {"model": ErrorResponse, "description": "not served within the service's request_timeout_s"},
    }

    @app.post("/v1/images", response_model=ImagesResponse, summary="Generate images", responses=responses)
    async def images(body: Body) -> Response:  # type: ignore[valid-type]
        return await serve(service.job, body)

    @app.post(
        "/v1/images/edits", response_model=ImagesResponse, summary="Edit an image: image-to-image, inversion edit, inpainting (with a mask)",
        responses=responses,
    )  # fmt: skip
    async def edits(body: EditBody) -> Response:  # type: ignore[valid-type]
        return await serve(service.edit_job, body)

    async def serve(make_job: Callable[[Any], Job], body: Any) -> Response:
        try:
            job = make_job(body)
        except InvalidArgumentError as exc:  # the Generator's rules, beyond what the schema can say
            return error(422, exc.allowed, str(exc), exc.name, _json_value(exc.value))
        try:
            result = await asyncio.wait_for(submit(job), timeout)
        except asyncio.TimeoutError:
            job.cancelled = True
            return error(504, f"a request served within {timeout:g} s", f"not served within request_timeout_s={timeout:g} s; retry later")
        except asyncio.CancelledError:  # the client went away: a job not yet started stays out of its batch
            job.cancelled = True
            raise
        if result is None:
            return error(504, f"a request served within {timeout:g} s", "cancelled before it ran")
        if isinstance(result, BaseException):
            return error(500, "engines that run", f"the engines failed: {type(result).__name__}: {result}")
        headers = {"X-Seed": str(result.seed), "X-Batch-Images": str(result.batch_images)}
        if job.response_format is ResponseFormat.png:
            return Response(service.png(result), media_type="image/png", headers=headers)
        return JSONResponse(service.encode(result), headers=headers)

    return app


def direct_submit(service: ImageService) -> Submit:
    """``submit`` without batching: each job alone in a worker thread (tests and single-process use)."""

    async def submit(job: Job) -> "JobResult | BaseException | None":
        return (await asyncio.to_thread(service.run_jobs, [job]))[0]

    return submit
