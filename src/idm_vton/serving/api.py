"""The HTTP API (FastAPI): ``/v1/tryon``, ``/v1/jobs``, ``/v1/info``, ``/healthz``, ``/readyz``.

The routes live in three :class:`~fastapi.APIRouter` s (:data:`status_router`,
:data:`tryon_router`, :data:`jobs_router`) and reach the server's state through one typed
dependency, :data:`Service` (``Annotated[TryOnService, Depends(get_service)]``): a test can
import a route and override :func:`get_service` (``app.dependency_overrides``).

Every error is JSON ``{"error": "..."}`` with a status that says whose fault it is: 400 (bad
image, empty mask, bad parameter; FastAPI's own validation errors included), 401 (API key), 404
(unknown job), 409 (job not finished / already finished), 410 (job cancelled), 413 (over the byte
or pixel limit), 429 (queue full), 503 (model not ready), 504 (timed out); 500 only for failures
of the server itself. See docs/serving.md.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..defaults import GUIDANCE_SCALE, NUM_INFERENCE_STEPS
from ..enums import GarmentCategory
from ..images import MAX_PIXELS
from ..models.tiny import TINY_MODEL_NOTE
from .engine import WorkItem
from .job_queue import Job, JobQueue, JobState
from .requests import IMAGE_FIELDS, Refusal, check_size, prepare_request, refusal
from .service import TryOnService

__all__ = [
    "ApiError",
    "Service",
    "TryOnFields",
    "TryOnUploads",
    "build_item",
    "create_api",
    "get_service",
    "jobs_router",
    "read_upload",
    "server_info",
    "status_router",
    "tryon_router",
    "wait_for",
]

#: Chunk size for reading an upload from its spool file.
_CHUNK = 1 << 20


#: An HTTP error answered as ``{"error": message}`` (the web UI shows the same message).
ApiError = Refusal


def get_service(request: Request) -> TryOnService:
    """The server's :class:`TryOnService` (set by :func:`create_api`; override it in tests)."""
    return request.app.state.service


#: The dependency every route takes its service from.
Service = Annotated[TryOnService, Depends(get_service)]


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ---------------------------------------------------------------------------- the request form
# The multipart form of POST /v1/tryon and /v1/jobs, as two FastAPI dependencies: each field is
# typed and described for the OpenAPI page, then checked again by TryOnParams against the
# server's limits.
@dataclass
class TryOnUploads:
    """The image files of a try-on request."""

    person: Annotated[UploadFile, File(description="photo of the person (PNG/JPEG/WebP...)")]
    garment: Annotated[UploadFile, File(description="in-shop photo of the garment")]
    mask: Annotated[
        UploadFile | None,
        File(description="inpaint mask, white = re-generate (absent: automatic)"),
    ] = None
    pose: Annotated[
        UploadFile | None,
        File(description="DensePose picture of the person (absent: automatic)"),
    ] = None


@dataclass
class TryOnFields:
    """The settings of a try-on request as sent: the keywords of :meth:`TryOnParams.parse`."""

    description: Annotated[
        str | None, Form(description="garment text, e.g. 'short sleeve t-shirt'")
    ] = None
    category: Annotated[
        str | None, Form(description=f"one of {', '.join(GarmentCategory.values())}")
    ] = None
    steps: Annotated[
        int | None, Form(description=f"denoising steps (default {NUM_INFERENCE_STEPS})")
    ] = None
    guidance: Annotated[
        float | None, Form(description=f"classifier-free guidance (default {GUIDANCE_SCALE})")
    ] = None
    seed: Annotated[
        int | None, Form(description="seed; -1 or absent = random (returned in X-Seed)")
    ] = None
    num_images: Annotated[int | None, Form(description="images to render (different seeds)")] = None
    paste_back: Annotated[
        bool | None, Form(description="paste the render into the full photo (default true)")
    ] = None


Uploads = Annotated[TryOnUploads, Depends()]
Fields = Annotated[TryOnFields, Depends()]
#: Every field a try-on form may have; any other is refused (400), not ignored.
FORM_FIELDS = frozenset(
    [f.name for f in dataclasses.fields(TryOnUploads)]
    + [f.name for f in dataclasses.fields(TryOnFields)]
)

#: What the try-on routes answer, for the OpenAPI page.
TRYON_RESPONSES = {
    200: {"content": {"image/png": {}, "application/json": {}}, "description": "the image(s)"},
    400: {"description": "bad image, empty mask, bad or unknown field"},
    401: {"description": "missing or wrong API key"},
    413: {"description": "upload over the byte or pixel limit (per file or per request)"},
    429: {"description": "queue full (requests or pixels)"},
    503: {"description": "model not ready, or the server is shutting down"},
}


# ---------------------------------------------------------------------------- requests
async def read_upload(upload: UploadFile | None, what: str, max_bytes: int) -> bytes | None:
    """The bytes of an uploaded file, refusing more than ``max_bytes`` (413) while reading."""
    if upload is None or (not upload.filename and not upload.size):
        return None
    if upload.size is not None:
        check_size(what, upload.size, max_bytes)
    chunks, total = [], 0
    while chunk := await upload.read(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise ApiError(413, f"{what}: over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def build_item(
    service: TryOnService, request: Request, uploads: TryOnUploads, fields: TryOnFields
):
    """Read the uploads and check everything (:func:`~.requests.prepare_request`, in a worker
    thread): the :class:`WorkItem` and its room in the queue."""
    form = await request.form()
    unknown = sorted(set(form.keys()) - FORM_FIELDS)
    if unknown:
        raise ApiError(
            400,
            f"unknown field {unknown[0]!r}; the fields are: {', '.join(sorted(FORM_FIELDS))}",
        )
    data = {
        name: await read_upload(getattr(uploads, name), name, service.config.max_upload_bytes)
        for name in IMAGE_FIELDS
    }
    return await run_in_threadpool(prepare_request, service, data, vars(fields))


def submit(service: TryOnService, item: WorkItem, reservation=None) -> Job:
    """Queue ``item``, turning a refusal into its HTTP error."""
    try:
        return service.submit(item, reservation)
    except Exception as err:
        found = refusal(err)
        if found is None:
            raise
        raise found from None


async def wait_for(service: TryOnService, job: Job, request: Request | None = None) -> None:
    """Wait until ``job`` is final; cancel it if the client goes away first."""
    while not job.state.final:
        await job.changed(job.version, timeout=0.5)
        if request is not None and not job.state.final and await request.is_disconnected():
            service.jobs.cancel(job.id)
            return


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "").lower()


def result_response(request: Request, job: Job) -> Response:
    """The answer for a finished job: PNG (one image) or JSON with base64 PNGs."""
    if job.state is JobState.CANCELLED:
        return _error(410, "the job was cancelled")
    if job.state is JobState.FAILED:
        return _error(job.status, job.error or "failed")
    if not job.state.final:
        return _error(409, f"the job is {job.state.value}; poll GET /v1/jobs/{job.id}")
    outcome = job.outcome
    if outcome is None:
        return _error(404, "no such job (unknown id, or its result has expired)")
    headers = {"X-Job-Id": job.id, "X-Seed": ",".join(str(s) for s in outcome.seeds)}
    if outcome.worker:
        headers["X-Worker"] = outcome.worker
    if len(outcome.images) == 1 and not _wants_json(request):
        return Response(outcome.images[0], media_type="image/png", headers=headers)
    width, height = outcome.size
    payload = {
        "id": job.id,
        "seeds": outcome.seeds,
        "width": width,
        "height": height,
        "media_type": "image/png",
        "images": [base64.b64encode(data).decode("ascii") for data in outcome.images],
        "mask": base64.b64encode(outcome.mask).decode("ascii") if outcome.mask else None,
    }
    return JSONResponse(payload, headers=headers)


# ---------------------------------------------------------------------------- the application
def create_api(service: TryOnService) -> FastAPI:
    """The FastAPI application with every HTTP route (the UI is mounted on it by ``app.py``)."""
    app = FastAPI(
        title="idm-vton",
        version=__version__,
        description="IDM-VTON virtual try-on: see docs/serving.md.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.service = service
    _add_error_handlers(app)
    for router in (status_router, tryon_router, jobs_router):
        app.include_router(router)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": "one line"}``; FastAPI's 422 validation errors as 400."""

    @app.exception_handler(Refusal)
    async def api_error(request: Request, err: Refusal) -> JSONResponse:
        return _error(err.status, err.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in err.errors():
            where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
            problems.append(f"{where}: {problem.get('msg', 'invalid')}")
        return _error(400, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        status = 400 if err.status_code == 422 else err.status_code
        return _error(status, str(err.detail), headers=getattr(err, "headers", None))


# ---------------------------------------------------------------------------- status
status_router = APIRouter(tags=["status"])


@status_router.get("/healthz")
async def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@status_router.get("/readyz", responses={503: {"description": "not ready"}})
async def readyz(service: Service) -> Response:
    """The model is loaded and warmed up (200), or not yet / failed / stopping (503)."""
    if service.ready:
        return JSONResponse({"status": "ready"})
    return _error(503, service.not_ready_reason())


@status_router.get("/v1/info")
async def info(service: Service) -> dict:
    """Model, device, defaults and limits."""
    return server_info(service)


def server_info(service: TryOnService) -> dict:
    """What ``GET /v1/info`` answers: model, device, defaults, limits, queue length."""
    config = service.config
    jobs = service.jobs
    return {
        "version": __version__,
        "ready": service.ready,
        "model": config.model,
        "note": TINY_MODEL_NOTE if config.is_tiny else None,
        "device": config.device,
        "dtype": config.dtype,
        **service.info,
        "defaults": {
            "steps": config.default_steps,
            "guidance": config.default_guidance,
            "category": config.default_category,
            "num_images": 1,
            "paste_back": True,
            "seed": -1,
        },
        "limits": {
            "max_upload_bytes": config.max_upload_bytes,
            "max_pixels": MAX_PIXELS,
            "max_request_pixels": config.max_request_pixels,
            "max_queue_pixels": config.max_queue_pixels,
            "max_result_bytes": config.max_result_bytes,
            "max_queue": config.max_queue,
            "max_batch": config.max_batch,
            "max_images": config.max_images,
            "max_steps": config.max_steps,
            "timeout_s": config.timeout_s,
        },
        "categories": GarmentCategory.values(),
        "queued": jobs.queued if jobs is not None else 0,
        "auth": config.api_key is not None,
    }


# ---------------------------------------------------------------------------- try-on
tryon_router = APIRouter(tags=["try-on"])


async def queue_request(
    service: TryOnService, request: Request, uploads: TryOnUploads, fields: TryOnFields
) -> tuple[Job, WorkItem]:
    """Check, decode and queue one request."""
    if not service.ready:
        raise ApiError(503, service.not_ready_reason())
    item, reservation = await build_item(service, request, uploads, fields)
    return submit(service, item, reservation), item


@tryon_router.post("/v1/tryon", responses=TRYON_RESPONSES, response_class=Response)
async def tryon(request: Request, service: Service, uploads: Uploads, fields: Fields) -> Response:
    """Render and wait. One image: ``image/png`` (seed in ``X-Seed``); several images or
    ``Accept: application/json``: JSON with base64 PNGs and their seeds."""
    job, _ = await queue_request(service, request, uploads, fields)
    await wait_for(service, job, request)
    try:
        return result_response(request, job)
    finally:
        service.jobs.forget(job.id)  # answered: nothing to fetch later


# ---------------------------------------------------------------------------- jobs
jobs_router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@jobs_router.post("", status_code=202, responses=TRYON_RESPONSES)
async def create_job(
    request: Request, service: Service, uploads: Uploads, fields: Fields
) -> JSONResponse:
    """Queue a try-on and return at once: ``{"id", "seeds", ...}`` (202)."""
    job, item = await queue_request(service, request, uploads, fields)
    return JSONResponse(
        {**public_status(service, job), "seeds": item.params.seeds},
        status_code=202,
        headers={"Location": f"/v1/jobs/{job.id}"},
    )


def find_job(service: TryOnService, job_id: str) -> Job:
    job = service.jobs.get(job_id) if service.jobs is not None else None
    if job is None:
        raise ApiError(404, "no such job (unknown id, or its result has expired)")
    return job


@jobs_router.get("/{job_id}")
async def job_status(service: Service, job_id: str) -> dict:
    """State (queued, running, done, failed, cancelled), queue position, step i of n."""
    return public_status(service, find_job(service, job_id))


@jobs_router.get("/{job_id}/result", response_class=Response)
async def job_result(request: Request, service: Service, job_id: str) -> Response:
    """The result, as ``POST /v1/tryon`` answers it; 409 while the job is not finished."""
    return result_response(request, find_job(service, job_id))


@jobs_router.delete("/{job_id}")
async def cancel_job(service: Service, job_id: str) -> Response:
    """Cancel: a queued job leaves the queue, a running one stops at its next step."""
    job = find_job(service, job_id)
    if job.state in (JobState.DONE, JobState.FAILED):
        return _error(409, f"the job is already {job.state.value}")
    service.jobs.cancel(job_id)
    return JSONResponse({"id": job.id, "state": job.state.value})


@jobs_router.get("/{job_id}/events")
async def job_events(request: Request, service: Service, job_id: str) -> StreamingResponse:
    """Server-sent events: ``queued`` (with the position), ``step`` (i of n), then one of
    ``done``, ``failed`` or ``cancelled``; the stream ends after that."""
    events = job_event_stream(request, service.jobs, find_job(service, job_id))
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def public_status(service: TryOnService, job: Job) -> dict:
    """A job's public status (what ``GET /v1/jobs/{id}`` answers)."""
    status = service.jobs.status(job)
    status.pop("version")
    return status


async def job_event_stream(request: Request, jobs: JobQueue, job: Job):
    """The server-sent events of ``job`` until it is final or the client leaves; a keep-alive
    comment after 15 s without news."""
    seen = -1
    while True:
        if job.version != seen:
            status = jobs.status(job)
            seen = status.pop("version")
            state = status["state"]
            name = "step" if state == JobState.RUNNING.value else state
            yield f"event: {name}\ndata: {json.dumps(status)}\n\n"
            if JobState(state).final:
                return
        elif not await job.changed(seen, timeout=15.0):
            yield ": keep-alive\n\n"
        if await request.is_disconnected():
            return
