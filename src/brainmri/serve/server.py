"""Run the app on uvicorn: one process by default, or `workers` processes sharing the port."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Any

from brainmri.errors import BrainMRIError
from brainmri.serve.gate import Limits

ENV_PREFIX = "BRAINMRI_SERVE_"
log = logging.getLogger("brainmri.serve")


def limits_from_env() -> Limits:
    """Limits from BRAINMRI_SERVE_MAX_BODY / _MAX_FILES and the API key from BRAINMRI_API_KEY."""
    defaults = Limits()
    return Limits(
        max_body_bytes=int(os.environ.get(ENV_PREFIX + "MAX_BODY", defaults.max_body_bytes)),
        max_files=int(os.environ.get(ENV_PREFIX + "MAX_FILES", defaults.max_files)),
        api_key=os.environ.get("BRAINMRI_API_KEY") or None,
    )


def app_from_env() -> Any:
    """App factory for uvicorn (each worker process loads its own model)."""
    from brainmri.infer.onnx_runtime import available_cores
    from brainmri.serve.app import create_app
    from brainmri.serve.engine import Engine

    threads = int(os.environ.get(ENV_PREFIX + "THREADS") or 1)
    workers = int(os.environ.get(ENV_PREFIX + "WORKERS") or 1)
    engine = Engine(os.environ.get(ENV_PREFIX + "MODEL") or None, threads=threads)
    # single-threaded model calls side by side, one per core: under concurrent requests this
    # keeps every core busy without the threads of one call waiting for each other
    parallel = max(1, available_cores() // (threads * workers))
    return create_app(engine, limits_from_env(), parallel=parallel)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    model: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    max_body_mb: float = 16.0,
    max_files: int = 16,
    access_log: bool = False,
    threads: int | None = None,
) -> None:
    """Load the model, then serve until interrupted (the model loads before the port opens)."""
    import uvicorn

    if model is not None and not Path(model).is_file():
        raise BrainMRIError(f"model file not found: {model}")
    if workers < 1:
        raise BrainMRIError("--workers must be at least 1")
    os.environ[ENV_PREFIX + "MAX_BODY"] = str(int(max_body_mb * 1024 * 1024))
    os.environ[ENV_PREFIX + "MAX_FILES"] = str(max_files)
    if model is not None:
        os.environ[ENV_PREFIX + "MODEL"] = str(Path(model).resolve())
    if threads:
        os.environ[ENV_PREFIX + "THREADS"] = str(threads)
    os.environ[ENV_PREFIX + "WORKERS"] = str(workers)
    if not is_loopback(host) and not os.environ.get("BRAINMRI_API_KEY"):
        log.warning("listening on %s without BRAINMRI_API_KEY: anyone who can reach it can use it",
                    host)  # fmt: skip
    options: dict[str, Any] = {
        "host": host, "port": port, "access_log": access_log, "server_header": False,
        "log_level": "info", "timeout_graceful_shutdown": 5,
    }  # fmt: skip
    if workers == 1:
        uvicorn.run(app_from_env(), **options)
    else:
        uvicorn.run("brainmri.serve.server:app_from_env", factory=True, workers=workers, **options)
