"""The FastAPI app: JSON API under /v1/, the page at /, OpenAPI at /docs.

Endpoints and their query options (the command line's options of the same names):
- GET /healthz, GET /v1/model, GET /v1/site: health, the model's summary, the site check;
- POST /v1/predict: records for `file` or `files`; `?tta=N` test-time augmentation views
  averaged, 1 (plain, default) to 5 (`brainmri predict --tta`); `?crop=auto|on|off` (`--crop`,
  default auto). Each record carries the `tta` and `crop` it was classified with;
- POST /v1/explain: overlay PNG for one `file`; `?method=gradcam|occlusion` (`--method`),
  `?class=NAME` the class to explain instead of the predicted one (`--class`; the caption then
  shows the model's own answer beside it), `?crop=auto|on|off` (`--crop`).
Any other query parameter, or a value outside those, is a 400 naming what is allowed.

Status codes (every error is JSON `{"error", "detail", ...}`, never a stack trace):
- 200: classified (`/v1/predict` with several `files` answers 200 with a status per record);
- 400: malformed request (no file, unknown field, bad multipart, bad file name, a query
  parameter the endpoint does not take or a value it does not allow);
- 401: `BRAINMRI_API_KEY` is set and the `X-API-Key` header does not match it;
- 413: body over the size limit (refused on its Content-Length before reading) or too many files;
- 415: not multipart/form-data, or a part whose content type is not an image or DICOM;
- 422: one upload that is not a usable brain MRI slice (unreadable, or refused by the input
  guard); the body carries its record with the reason;
- 503: more than 256 uploads already wait for the model (Retry-After: 1).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from brainmri import __version__
from brainmri.infer.explain_methods import METHODS
from brainmri.infer.inputs import CROP_MODES
from brainmri.infer.records import TTA_MAX
from brainmri.serve.batcher import Batcher
from brainmri.serve.engine import Engine, Prepared, Record
from brainmri.serve.gate import Gate, Limits, error_body

STATIC = Path(__file__).parent / "static"
FIELDS = ("file", "files")
ACCEPTED_TYPES = ("image/", "application/dicom", "application/octet-stream")
MAX_NAME = 255
TTA_CHOICES = tuple(str(n) for n in range(1, TTA_MAX + 1))

log = logging.getLogger("brainmri.serve")


class UploadError(HTTPException):
    """An HTTP-level refusal of an upload (status + one-line detail)."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(status, detail)
        self.error = error


MULTIPART_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                    },
                }
            }
        },
    }
}


def check_name(raw: str | None) -> str:
    """The upload's file name as given, refused when it is a path or has control characters."""
    name = raw or "upload"
    if len(name) > MAX_NAME:
        raise UploadError(400, "bad-filename", f"file name longer than {MAX_NAME} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UploadError(400, "bad-filename", "file name with control characters")
    if (
        name in (".", "..")
        or PurePosixPath(name).name != name
        or PureWindowsPath(name).name != name
    ):
        raise UploadError(400, "bad-filename", f"file name {name!r} is a path: send a plain name")
    return name


def check_type(upload: UploadFile) -> None:
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if ctype and not ctype.startswith(ACCEPTED_TYPES):
        raise UploadError(
            415, "unsupported-media-type",
            f"{upload.filename}: content type {ctype}; send JPEG, PNG or DICOM scans",
        )  # fmt: skip


async def read_uploads(
    request: Request, limits: Limits, one: bool
) -> tuple[list[tuple[str, bytes]], bool]:
    """((name, bytes) per uploaded file, whether the `files` field was used), after the HTTP
    checks on fields, names and content types."""
    try:
        form = await request.form(max_files=limits.max_files + 1, max_fields=limits.max_files + 8)
    except HTTPException as exc:
        if "Too many files" in str(exc.detail):
            raise UploadError(
                413, "too-many-files", f"more than {limits.max_files} files"
            ) from None
        raise UploadError(400, "bad-request", f"malformed multipart body: {exc.detail}") from None
    try:
        unknown = sorted({k for k in form.keys() if k not in FIELDS})
        if unknown:
            raise UploadError(
                400, "unexpected-field",
                f"unexpected field {unknown[0]!r}: send the scan as 'file' (several as 'files')",
            )  # fmt: skip
        parts = [v for k in FIELDS for v in form.getlist(k)]
        if not parts:
            raise UploadError(
                400, "no-file", "no file: send the scan in the multipart field 'file'"
            )
        if any(not isinstance(p, UploadFile) for p in parts):
            raise UploadError(400, "not-a-file", "the 'file'/'files' fields must be file uploads")
        if len(parts) > limits.max_files:
            raise UploadError(413, "too-many-files", f"{len(parts)} files > {limits.max_files}")
        if one and len(parts) != 1:
            raise UploadError(400, "one-file", f"{len(parts)} files: this endpoint takes one")
        uploads: list[tuple[str, bytes]] = []
        for part in parts:
            assert isinstance(part, UploadFile)
            name = check_name(part.filename)
            check_type(part)
            uploads.append((name, await part.read()))
        return uploads, bool(form.getlist("files"))
    finally:
        await form.close()


def refusal(record: Record) -> JSONResponse:
    """422 for one upload that was not classified, with its record."""
    error = "rejected" if record["status"] == "rejected" else "unreadable"
    return JSONResponse(
        error_body(error, str(record.get("reason")), records=[record]), status_code=422
    )


def choice(name: str, value: str, allowed: Sequence[str]) -> str:
    """`value` when it is one of `allowed`, else a 400 naming them (query options)."""
    if value in allowed:
        return value
    shown = value if len(value) <= 40 else value[:40] + "..."
    detail = f"{name} must be one of {', '.join(allowed)}, got {shown!r}"
    raise UploadError(400, "bad-request", detail)


def query_doc(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An optional query parameter as OpenAPI describes it (the routes read and check their
    options themselves, with `choice`, so that every refusal is the same one-line 400)."""
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}  # fmt: skip


TTA_DOC = query_doc(
    "tta", {"type": "integer", "minimum": 1, "maximum": TTA_MAX, "default": 1},
    "Test-time augmentation: views averaged, 1 (plain) to 5, as `brainmri predict --tta`; "
    "each view beyond the plain one costs a model pass.",
)  # fmt: skip
CROP_DOC = query_doc(
    "crop", {"type": "string", "enum": list(CROP_MODES), "default": "auto"},
    "auto: crop a wide black frame away; on: always crop to the content; off: never "
    "(as `--crop`).",
)  # fmt: skip
METHOD_DOC = query_doc(
    "method", {"type": "string", "enum": list(METHODS), "default": "gradcam"},
    "gradcam, or occlusion (under a second more on 2 CPU cores), as `brainmri explain --method`.",
)  # fmt: skip


def class_doc(class_names: Sequence[str]) -> dict[str, Any]:
    return query_doc(
        "class", {"type": "string", "enum": list(class_names)},
        "Explain this class instead of the predicted one, as `brainmri explain --class`; the "
        "caption then shows the model's own answer beside it.",
    )  # fmt: skip


def only_query(*allowed: str) -> Any:
    """A dependency refusing query parameters the endpoint does not take (400), so that a
    misspelt or CLI-only option (e.g. `min_confidence`) is not silently ignored."""

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - set(allowed))
        if unknown:
            takes = ", ".join(allowed) if allowed else "no query parameters"
            detail = f"unknown query parameter {', '.join(map(repr, unknown))} (takes: {takes})"
            raise UploadError(400, "bad-request", detail)

    return Depends(check)


def create_app(
    engine: Engine,
    limits: Limits | None = None,
    max_batch: int = 16,
    max_waiting: int = 256,
    parallel: int = 1,
) -> FastAPI:
    """The app around a loaded engine (tests build it directly; `serve` runs it on uvicorn).
    `parallel`: model calls at once (batches of concurrent uploads run side by side)."""
    limits = limits or Limits()
    batcher: Batcher[Prepared, Record] = Batcher(
        engine.classify, max_batch, max_waiting, parallel
    )
    decoder = ThreadPoolExecutor(2, thread_name_prefix="brainmri-decode")
    explainer = ThreadPoolExecutor(1, thread_name_prefix="brainmri-explain")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()
        for pool in (decoder, explainer):
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPIOffline(  # /docs and /redoc from files inside fastapi-offline: no CDN
        title="brainmri",
        version=__version__,
        summary="4-class brain MRI tumor classifier (glioma, meningioma, notumor, pituitary). "
        "Not for clinical use.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.batcher = batcher
    app.add_middleware(Gate, limits=limits)
    add_error_handlers(app)
    model_summary = engine.describe()

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """200 once the model is loaded (it is loaded before the server accepts requests)."""
        return {
            "status": "ok",
            "model_sha256": engine.sha256,
            "auth": limits.api_key is not None,
            "classified": batcher.items,
            "batches": batcher.batches,
        }

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """Class names, model sha256, recipe summary and the model's measured figures."""
        return {**model_summary, "limits": {"max_body_bytes": limits.max_body_bytes,
                                            "max_files": limits.max_files}}  # fmt: skip

    @app.get("/v1/site")
    async def site() -> dict[str, Any]:
        """Whether the last uploads, as a whole, look like the images the model was checked on
        (at least 20 scored, most above its reference median): a warning, nothing refused."""
        return engine.site_status()

    @app.post(
        "/v1/predict",
        openapi_extra={**MULTIPART_DOC, "parameters": [TTA_DOC, CROP_DOC]},
        dependencies=[only_query("tta", "crop")],
    )
    async def predict(request: Request) -> Any:
        """Classify scans: field `file` (one; 422 if not classified) or `files` (several).
        `?tta=N` (1 to 5) and `?crop=auto|on|off` as `brainmri predict --tta/--crop`; every
        record carries the `tta` and `crop` it was classified with."""
        query = request.query_params
        tta = int(choice("tta", query.get("tta", "1"), TTA_CHOICES))
        crop = choice("crop", query.get("crop", "auto"), CROP_MODES)
        uploads, several = await read_uploads(request, limits, one=False)
        if not batcher.has_room(len(uploads)):
            detail = "the server is busy: too many uploads are waiting; retry shortly"
            return JSONResponse(error_body("busy", detail), 503, headers={"retry-after": "1"})
        loop = asyncio.get_running_loop()
        prepared = await asyncio.gather(  # decoded beside the model, maybe busy with a batch
            *(loop.run_in_executor(decoder, engine.prepare, n, d, crop, tta) for n, d in uploads)
        )
        records = await batcher.submit(prepared)
        if not several and len(records) == 1 and records[0]["status"] != "ok":
            return refusal(records[0])
        return JSONResponse({"records": records})

    add_explain(app, engine, limits, explainer, list(model_summary["class_names"]))
    add_page(app)
    return app


def add_explain(
    app: FastAPI,
    engine: Engine,
    limits: Limits,
    explainer: ThreadPoolExecutor,
    class_names: list[str],
) -> None:
    """POST /v1/explain: one scan's overlay PNG, made in `explainer` (one map at a time);
    `?class=` takes one of `class_names` (the model summary's)."""

    @app.post(
        "/v1/explain",
        openapi_extra={
            **MULTIPART_DOC,
            "parameters": [METHOD_DOC, class_doc(class_names), CROP_DOC],
        },
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
        dependencies=[only_query("method", "class", "crop")],
    )
    async def explain(request: Request) -> Response:
        """Overlay PNG for one scan (field `file`), class and probability written on it.
        `?method=gradcam` (default) or `occlusion` (under a second more on 2 CPU cores);
        `?class=NAME` explains that class instead of the predicted one (the caption shows the
        model's own answer beside it); `?crop=auto|on|off`: as `brainmri explain`'s options.
        The first call loads PyTorch for Grad-CAM (seconds)."""
        query = request.query_params
        method = choice("method", query.get("method", "gradcam"), METHODS)
        class_name = query.get("class")
        if class_name is not None:
            class_name = choice("class", class_name, class_names)
        crop = choice("crop", query.get("crop", "auto"), CROP_MODES)
        ((name, data),), _ = await read_uploads(request, limits, one=True)
        loop = asyncio.get_running_loop()
        job = functools.partial(engine.explain, name, data, method, class_name, crop)
        record, png = await loop.run_in_executor(explainer, job)
        if png is None:
            return refusal(record)
        return Response(png, media_type="image/png", headers={"cache-control": "no-store"})


def add_page(app: FastAPI) -> None:
    """The page at / and its static files (serve/static/)."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON; an unexpected one is logged here and answered without details."""

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        error = getattr(exc, "error", None) or _ERROR_WORDS.get(exc.status_code, "error")
        return JSONResponse(
            error_body(error, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        return JSONResponse(
            error_body("bad-request", str(first.get("msg", "invalid request"))), status_code=400
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal", "internal server error"), status_code=500)


_ERROR_WORDS = {404: "not-found", 405: "method-not-allowed", 400: "bad-request"}
