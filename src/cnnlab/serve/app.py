"""The HTTP layer: FastAPI routes over one shared `Service` (the model is loaded once).

Routes: POST /predict (multipart images -> JSON per image), GET /health, GET /model,
GET / (the drag-and-drop page), /docs (OpenAPI). Request bodies are capped before they are
parsed, model calls run in worker threads, at most `max_concurrency` at a time.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at
# definition time, and their types are imported inside create_app (fastapi is optional).
import json
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from cnnlab.backends import require
from cnnlab.serve.service import Limits, Service, UploadRejected

FORM_OVERHEAD = 64 * 2**10  # bytes of multipart headers and boundaries allowed per request
PREDICT_HELP = "send images as multipart/form-data field 'files' (curl -F files=@image.png)"


def create_app(
    model_src: str | Path,
    *,
    reject_below: float | None = None,
    audit_log: str | Path | None = None,
    max_upload_bytes: int = Limits.max_upload_bytes,
    max_pixels: int = Limits.max_pixels,
    max_files: int = Limits.max_files,
    max_concurrency: int = Limits.max_concurrency,
    device: str = "auto",
) -> Any:
    """A FastAPI app serving `model_src` (run folder, .safetensors, .onnx or .pt).

    Examples
    --------
    >>> from fastapi.testclient import TestClient  # doctest: +SKIP
    >>> client = TestClient(create_app("runs/mnist"))  # doctest: +SKIP
    >>> client.post("/predict", files={"files": open("7.png", "rb")}).json()  # doctest: +SKIP
    {'predictions': [{'file': '7.png', 'label': '7', 'probability': 0.998, ...}], ...}
    """
    fastapi = require("fastapi", "serve")
    require("multipart", "serve")  # python-multipart parses the uploads
    import anyio
    from fastapi import File, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    from cnnlab import __version__

    limits = Limits(max_upload_bytes, max_pixels, max_files, max_concurrency)
    service = Service(
        model_src, reject_below=reject_below, audit_log=audit_log, limits=limits, device=device
    )
    page = resources.files("cnnlab.serve").joinpath("static/index.html").read_text("utf-8")
    started = time.time()
    app = fastapi.FastAPI(
        title="cnnlab",
        version=__version__,
        description=f"CNN image classifier: {', '.join(service.class_names)}",
    )
    app.state.service = service
    app.state.limiter = None  # anyio.CapacityLimiter, made inside the event loop
    app.add_middleware(BodyLimit, max_bytes=max_files * (max_upload_bytes + FORM_OVERHEAD))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = PREDICT_HELP if request.url.path == "/predict" else str(exc.errors())
        return JSONResponse({"detail": detail, "errors": jsonable(exc.errors())}, 422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness: the model is loaded and the process answers."""
        return {"status": "ok", "uptime_s": round(time.time() - started, 1)}

    @app.get("/model")
    def model() -> dict[str, Any]:
        """Classes, input shape (C, H, W), versions, SHA-256 of the model file, limits."""
        return service.describe()

    @app.post("/predict")
    async def predict(
        files: Annotated[list[UploadFile], File(description="one or several image files")],
        gradcam: Annotated[
            bool, Query(description="add a Grad-CAM overlay (PyTorch models)")
        ] = False,
    ) -> Any:
        """Label, probabilities, uncertain flag and seconds taken, for each uploaded image."""
        t0 = time.perf_counter()
        if len(files) > limits.max_files:
            return JSONResponse(
                {"detail": f"{len(files)} files, at most {limits.max_files} per request"}, 413
            )
        uploads = []
        try:
            for i, f in enumerate(files):
                name = f.filename or f"upload-{i}"
                service.check_upload(name, f.content_type, f.size or 0)
                data = await f.read(limits.max_upload_bytes + 1)
                service.check_upload(name, f.content_type, len(data))
                uploads.append((name, data))
            if app.state.limiter is None:
                app.state.limiter = anyio.CapacityLimiter(limits.max_concurrency)
            results = await anyio.to_thread.run_sync(
                lambda: service.predict(uploads, gradcam=gradcam), limiter=app.state.limiter
            )
        except UploadRejected as e:
            return JSONResponse({"detail": e.message}, e.status)
        out: dict[str, Any] = {
            "predictions": results,
            "model_sha256": service.model_sha256,
            "seconds": round(time.perf_counter() - t0, 6),
        }
        if gradcam and service.gradcam_note is not None:
            out["gradcam"] = service.gradcam_note
        return out

    return app


def jsonable(obj: Any) -> Any:
    """Validation errors may hold bytes or exceptions; keep what JSON can carry."""
    return json.loads(json.dumps(obj, default=str))


class BodyLimit:
    """ASGI middleware: 413 once a request body passes `max_bytes`, before it is parsed."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": f"request body larger than {self.max_bytes} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    """Raised inside the app's receive() when the body passes the limit."""
