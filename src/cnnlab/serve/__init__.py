"""Serve a trained or exported model over HTTP (FastAPI + uvicorn), with an audit trail.

`Service` is the model and its rules without HTTP; `create_app` wraps it in FastAPI routes;
`serve` runs that app with uvicorn. Needs the optional extra: `pip install 'cnnlab[serve]'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.serve.app import create_app
from cnnlab.serve.service import Limits, Service, UploadRejected

__all__ = ["Limits", "Service", "UploadRejected", "create_app", "serve"]

MAX_CONNECTIONS = 64  # open connections + queued requests before uvicorn answers 503


def serve(
    model_src: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    **app_options: Any,
) -> None:
    """Run the service with uvicorn until interrupted (options as for `create_app`)."""
    from cnnlab.backends import require

    uvicorn = require("uvicorn", "serve")
    app = create_app(model_src, **app_options)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=5,
    )
