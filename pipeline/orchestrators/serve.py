"""`lstm-pipeline serve`: forecasts over HTTP from an export directory or a registry's `current`.

FastAPI on uvicorn: the ASGI stack most Python services run, well kept, with request handling,
a threadpool for blocking work and OpenAPI docs (`/docs`) built in; see docs/serving.md.

One `ModelHolder` owns the model that answers. For a registry's `current`, a watcher thread polls
the pointer; a new version is loaded completely (`Forecaster.load` checks every file against the
manifest) before one attribute assignment makes it the one that answers. A request reads that
attribute once, at its start, so it is answered entirely by one version (the old model stays
alive until its last request is done) and no request fails during a promotion. A version that
fails to load is never served: the old one keeps answering, /health shows the error, and the
watcher tries again when `current` changes again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from pipeline import __version__
from pipeline.library.artifacts import sha256_file
from pipeline.library.errors import DataError, UserError, shown
from pipeline.library.forecaster import MANIFEST, Forecaster
from pipeline.library.registry_store import current_version, resolve_model_dir
from pipeline.orchestrators.forecast_io import (
    FUTURE,
    FUTURE_IN_JSON,
    HISTORY,
    forecast,
    forecast_csv,
    forecast_records,
    one_line,
    read_csv_text,
)

log = logging.getLogger("pipeline")

VERSION_HEADER = "X-Model-Version"


@dataclass(frozen=True)
class Served:
    """One loaded model version, as requests see it."""

    forecaster: Forecaster
    version: str
    directory: Path
    loaded_at: str


def load_served(model: Path) -> Served:
    """Load and verify the model `model` names: a registry's `current` is followed to its version directory.

    The version is that directory's name; for a plain export directory, the first 12 hex digits of
    its manifest's sha256 (which changes with any file of the export).
    """
    directory = resolve_model_dir(model)
    forecaster = Forecaster.load(directory)
    version = directory.name if directory != model else sha256_file(directory / MANIFEST)[:12]
    return Served(forecaster, version, directory, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


class ModelHolder:
    """The model that answers requests and, for a registry's `current`, the watcher that swaps in a new one."""

    def __init__(self, model: Path, poll: float = 1.0) -> None:
        self.model = model
        self.poll = poll
        self.served = load_served(model)  # a UserError here: never serve a model that fails its manifest
        self.registry = self.served.directory.parent if self.served.directory != model else None
        self.error: str | None = None  # the last failed swap, shown by /health until a version loads
        self._seen = self.served.version  # the version `current` named at the last check
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """One poll: when `current` names another version, load it and only then swap it in."""
        try:
            named = current_version(self.registry)
            if named == self._seen:
                return
            self._seen = named
            if named == self.served.version:  # back to the version that serves
                self.error = None
                return
            served = load_served(self.model)
        except Exception as exc:
            reason = one_line(str(exc)) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            self.error = f"version {self._seen} not served ({self.served.version} still is): {reason}"
            log.error("serve: %s", self.error, exc_info=not isinstance(exc, UserError))
            return
        previous, self.served, self.error = self.served.version, served, None
        self._seen = served.version
        log.info("serve: now serving %s (was %s) from %s", served.version, previous, served.directory)

    def start(self) -> None:
        if self.registry is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="registry-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            self.check()

    def health(self) -> dict[str, Any]:
        served = self.served
        return {"status": "ok", "version": served.version, "error": self.error}

    def describe(self) -> dict[str, Any]:
        """What /model shows: the version, where it came from, its data and test metrics, what it expects."""
        served = self.served
        f = served.forecaster
        s = f.spec
        return {
            "version": served.version,
            "path": str(served.directory),
            "registry": str(self.registry) if self.registry else None,
            "loaded_at": served.loaded_at,
            "name": s.name,
            "data_fingerprint": s.data_fingerprint,
            "test_metrics": s.test_metrics,
            "pipeline_version": s.pipeline_version,
            "lookback": f.lookback,
            "horizon": f.horizon,
            "freq": s.freq,
            "quantiles": f.quantiles,
            "history": {
                "format": s.format,
                "id_column": s.id_column,
                "time_column": s.time_column,
                "target_column": None if s.format == "wide" else s.target_column,  # wide: a column per series
                "covariates": f.covariates,
                "future_covariates": f.future_covariates,
                "static_covariates": list(f.model.spec.static_covariates),  # read from a new series' rows
            },
        }


class UnsupportedMediaType(UserError):
    """A request body of a type the service does not read (answered 415)."""


def read_request(
    body: bytes, content_type: str, id_column: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(history, future covariates or None) from a request body: JSON records or the CSV `predict` reads
    (the series ids in `id_column` as text)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "text/csv":
        return read_csv_text(body, id_column=id_column), None
    if kind == "application/json" or kind.endswith("+json"):
        return read_json(body)
    raise UnsupportedMediaType(
        f"Content-Type must be application/json or text/csv (a history file), got {shown(kind) if kind else 'none'}"
    )


def read_json(body: bytes) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    shape = 'a list of records, or {"records": [...], "future": [...]}'
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise DataError(f"{HISTORY}: the request body is not valid JSON ({exc}); send {shape}") from None
    except RecursionError:  # arrays nested thousands deep: no history has them
        raise DataError(f"{HISTORY}: the request body nests too deep to be a history; send {shape}") from None
    if isinstance(payload, list):
        return records_frame(payload, HISTORY), None
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise DataError(f"{HISTORY}: the request body must be {shape}")
    unknown = sorted(set(payload) - {"records", "future"})
    if unknown:
        raise DataError(f"{HISTORY}: unknown key '{shown(unknown[0])}' in the request body; send {shape}")
    future = payload.get("future")
    if future is not None and not isinstance(future, list):
        raise DataError(f"{FUTURE}: 'future' must be a list of records")
    return records_frame(payload["records"], HISTORY), records_frame(future, FUTURE) if future is not None else None


def records_frame(records: list, source: str) -> pd.DataFrame:
    """Rows given as JSON objects (column: value) as the frame a history file would give."""
    if not records:  # as an empty history file is: not a frame without the time column
        raise DataError(f"{source}: no rows")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{source}: record {i + 1} is not an object (column: value)")
    return pd.DataFrame.from_records(records)


def wants_csv(accept: str) -> bool:
    """Whether the Accept header asks for CSV before (or instead of) JSON."""
    for part in accept.split(","):
        kind = part.split(";", 1)[0].strip().lower()
        if kind == "text/csv":
            return True
        if kind in ("application/json", "*/*"):
            return False
    return False


def finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


MAX_BODY_MB = 64.0
"""`serve --max-body-mb`'s default: a history of a few hundred thousand rows; the model reads only its last
`lookback` steps per series, and a larger body holds the service's memory for nothing."""


async def bounded_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it is over `limit` bytes (by its Content-Length, or as it streams in):
    without a bound one request could hold the service's memory with an endless body."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(holder: ModelHolder, slots: int = 2, max_body_mb: float = MAX_BODY_MB) -> FastAPI:
    """The service's routes around `holder`; its watcher runs for the app's lifetime.

    At most `slots` forecasts compute at once (the others wait): each torch call from a request
    thread starts its own team of torch threads, so the threadpool's 40 threads calling together
    would oversubscribe the cores many times over. A body over `max_body_mb` is answered 413.
    """
    limit = int(max_body_mb * 1_000_000)
    computing = threading.BoundedSemaphore(slots)

    def reply(payload: Any, version: str, status: int = 200) -> Response:
        headers = {VERSION_HEADER: version}
        return Response(json.dumps(finite(payload)), status, headers, "application/json")

    def answer(served: Served, body: bytes, content_type: str, accept: str, scale: str) -> Response:
        version = served.version
        try:
            history, future = read_request(body, content_type, served.forecaster.spec.id_column)
            with computing:
                result = forecast(served.forecaster, history, HISTORY, future, FUTURE, scale, FUTURE_IN_JSON)
        except UnsupportedMediaType as exc:
            return reply({"error": one_line(str(exc)), "version": version}, version, 415)
        except UserError as exc:
            return reply({"error": one_line(str(exc)), "version": version}, version, 400)
        except Exception:
            log.exception("serve: internal error answering a forecast request (version %s)", version)
            return reply({"error": "internal error; see the service's log", "version": version}, version, 500)
        if wants_csv(accept):
            return Response(forecast_csv(result), 200, {VERSION_HEADER: version}, "text/csv")
        return reply({"version": version, "forecast": forecast_records(result)}, version)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder.start()
        try:
            yield
        finally:
            holder.stop()

    app = FastAPI(title="lstm-pipeline forecasts", version=__version__, lifespan=lifespan)

    @app.get("/health")
    def health() -> Response:
        status = holder.health()
        return reply(status, status["version"])

    @app.get("/model")
    def model() -> Response:
        description = holder.describe()
        return reply(description, description["version"])

    body_types = {"application/json": {"schema": {}}, "text/csv": {"schema": {"type": "string"}}}

    @app.post("/forecast", openapi_extra={"requestBody": {"content": body_types, "required": True}})
    async def forecast_route(request: Request) -> Response:
        served = holder.served  # taken once: this request is answered entirely by this version
        body = await bounded_body(request, limit)
        if body is None:
            error = (
                f"the request body is over {max_body_mb:g} MB (serve --max-body-mb); send a shorter history: "
                f"the model reads the last {served.forecaster.lookback} steps of each series"
            )
            return reply({"error": error, "version": served.version}, served.version, 413)
        headers, scale = request.headers, request.query_params.get("scale", "training")
        kind, accept = headers.get("content-type", ""), headers.get("accept", "")
        return await run_in_threadpool(answer, served, body, kind, accept, scale)

    return app


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, opened before the server starts so that a taken port is one clear line."""
    sock = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto must say TCP: asyncio sets TCP_NODELAY only on connections of such a socket, and without
        # it every response waited ~40 ms for the client's delayed ACK (bench/README.md)
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen()
        return sock
    except OSError as exc:
        if sock is not None:
            sock.close()
        reason = exc.strerror or str(exc)  # a name that resolves to nothing: errno -2, which os.strerror cannot name
        raise UserError(f"cannot listen on {host}:{port}: {reason}") from None


def serve(model: Path, host: str, port: int, poll: float, threads: int, max_body_mb: float = MAX_BODY_MB) -> None:
    """Run the service until interrupted (SIGINT or SIGTERM: requests in flight are finished first)."""
    from pipeline.library.runtime import available_cores, configure_process

    configure_process(threads)
    # two at least, so that one request's Python work (parsing, checks) overlaps another's torch work
    # (measured on 2 cores against one at a time: bench/README.md)
    slots = max(2, available_cores() // threads)
    holder = ModelHolder(model, poll)
    sock = listen(host, port)
    where = f"registry {holder.registry}" if holder.registry else str(holder.served.directory)
    log.info(
        "serve: %s from %s on http://%s:%d (%d torch threads, %d forecasts at once%s)",
        holder.served.version, where, host, port, threads, slots,
        f", checking current every {poll:g} s" if holder.registry else "",
    )  # fmt: skip
    app = create_app(holder, slots, max_body_mb)
    config = uvicorn.Config(app, access_log=False, log_level="info", timeout_graceful_shutdown=30)
    uvicorn.Server(config).run(sockets=[sock])
