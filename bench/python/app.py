"""The fixed three-candidate pipeline served the way the seeds build Python
ML services: FastAPI on uvicorn, prometheus_client metrics, structlog JSON
logs, and the OpenTelemetry SDK (FastAPI instrumentation, batch span and log
processors, OTLP/HTTP protobuf export).

It is the Python side of `cargo bench --bench service_load -- --suite
python`; `examples/fixed_three.rs` serves the same pipeline on pipelens, with
the same routes, response shape, model results and telemetry per run.

Run (after `bench/python/setup`):

    BENCH_ADDR=127.0.0.1:18081 bench/python/.venv/bin/python bench/python/app.py

Environment:
- `BENCH_ADDR`: `host:port` to listen on (default `127.0.0.1:18081`).
- `BENCH_TELEMETRY`: `on` (default) or `off`. On: prometheus_client metrics
  on /metrics, one structlog JSON line per run on stdout, a span per request,
  run, stage and model, and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
  per-signal `OTEL_EXPORTER_OTLP_{TRACES,LOGS}_ENDPOINT`) is set, traces and
  logs exported over OTLP/HTTP protobuf through batch processors. Off: no
  metrics, no logs, no OpenTelemetry SDK (not even imported); /metrics is
  empty.
- The SDK's own variables: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
  `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`,
  `OTEL_BLRP_*`, `OTEL_SDK_DISABLED`, ...

Routes:
- `POST /v1/pipelines/fixed/runs` with `{"features": [number, ...]}` (1 to 64
  finite numbers): 200 with the pipelens run report, `{"pipeline", "trace_id",
  "duration_seconds", "stages": [...], "output": {"label", "confidence",
  "model"}}`; a bad body is 422 `{"error": {"code": "invalid_field", "field",
  "message", "trace_id"}}` (400 `malformed_json` when it is not JSON).
- `GET /health`, `GET /ready`, `GET /metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

PIPELINE = "fixed"
STAGE = "candidates"
MAX_FEATURES = 64
RUNS_ROUTE = f"/v1/pipelines/{PIPELINE}/runs"
DEFAULT_ADDR = "127.0.0.1:18081"


def _telemetry_on() -> bool:
    value = os.environ.get("BENCH_TELEMETRY", "").strip().lower()
    if value in ("", "on"):
        return True
    if value == "off":
        return False
    raise SystemExit(f"invalid BENCH_TELEMETRY={value!r}: expected on or off")


TELEMETRY = _telemetry_on()

if TELEMETRY:
    # Off means no telemetry at all: the SDK and prometheus_client are not
    # even imported.
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


# --- The models: fixed results, so only the framework and telemetry count. ---


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float


class FixedModel:
    """A candidate that always answers the same label and confidence."""

    version = "1.0.0"

    def __init__(self, name: str, label: str, confidence: float) -> None:
        self.name = name
        self._prediction = Prediction(label, confidence)

    async def run(self, features: list[float]) -> Prediction:
        return self._prediction


# The same numbers as examples/fixed_three.rs.
CANDIDATES = (
    FixedModel("a", "cat", 0.91),
    FixedModel("b", "cat", 0.84),
    FixedModel("c", "dog", 0.55),
)


# --- The request. ---

FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    features: Annotated[list[FiniteNumber], Field(min_length=1, max_length=MAX_FEATURES)]


class PipelineFailed(Exception):
    """No candidate succeeded."""

    def __init__(self, failures: list[dict[str, Any]], trace_id: str | None) -> None:
        super().__init__(f"pipeline `{PIPELINE}` failed at stage `{STAGE}`: no model succeeded")
        self.failures = failures
        self.trace_id = trace_id


# --- The run report, shaped like pipelens' RunReport. ---


def _model_report(
    model: FixedModel,
    outcome: str,
    prediction: Prediction | None,
    duration: float,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "model_name": model.name,
        "model_version": model.version,
        "outcome": outcome,
        "confidence": prediction.confidence if prediction else None,
        "duration_seconds": duration,
        "components": [],
        "error": error,
    }


Result = tuple[FixedModel, "Prediction | None", dict[str, Any]]


def _select(results: list[Result]) -> tuple[FixedModel, Prediction] | None:
    """Highest confidence wins; ties go to the first declared."""
    best: tuple[FixedModel, Prediction] | None = None
    for model, prediction, _ in results:
        if prediction is not None and (best is None or prediction.confidence > best[1].confidence):
            best = (model, prediction)
    return best


def _report(
    trace_id: str | None,
    run_seconds: float,
    stage_seconds: float,
    results: list[Result],
    winner: tuple[FixedModel, Prediction],
) -> dict[str, Any]:
    model, prediction = winner
    return {
        "pipeline": PIPELINE,
        "trace_id": trace_id,
        "duration_seconds": run_seconds,
        "stages": [
            {
                "stage": STAGE,
                "kind": "parallel",
                "selected_model": model.name,
                "models": [r for _, _, r in results],
                "duration_seconds": stage_seconds,
            }
        ],
        "output": {
            "label": prediction.label,
            "confidence": prediction.confidence,
            "model": model.name,
        },
    }


def _failures(results: list[Result]) -> list[dict[str, Any]]:
    return [
        {"model": r["model_name"], "outcome": r["outcome"], "message": r["error"]}
        for _, prediction, r in results
        if prediction is None
    ]


# --- Telemetry off: the bare pipeline. ---


async def _run_candidate_bare(model: FixedModel, features: list[float]) -> Result:
    started = time.perf_counter()
    try:
        prediction = await model.run(features)
    except Exception as exc:  # a failing model is an outcome, not a crash
        return (
            model,
            None,
            _model_report(model, "error", None, time.perf_counter() - started, str(exc)),
        )
    return (
        model,
        prediction,
        _model_report(model, "success", prediction, time.perf_counter() - started),
    )


async def run_pipeline_bare(features: list[float]) -> dict[str, Any]:
    started = time.perf_counter()
    results = list(await asyncio.gather(*(_run_candidate_bare(m, features) for m in CANDIDATES)))
    stage_seconds = time.perf_counter() - started
    winner = _select(results)
    if winner is None:
        raise PipelineFailed(_failures(results), None)
    return _report(None, time.perf_counter() - started, stage_seconds, results, winner)


# --- Telemetry on: the seeds' instrumentation. ---

# Filled in by setup_telemetry() when BENCH_TELEMETRY=on.
tracer: Any = None
log: Any = None
metrics: Any = None


class Metrics:
    """The model metrics of seeds/000 and 003 under the names and labels of
    DESIGN.md, and the HTTP semantic-convention metrics, in prometheus_client.
    Label sets known in advance are bound once (`.labels()` takes a lock and
    a dict lookup per call)."""

    DURATION_BUCKETS = (
        0.0001,
        0.00025,
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
    )
    CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    HTTP_BUCKETS = (
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.075,
        0.1,
        0.25,
        0.5,
        0.75,
        1.0,
        2.5,
        5.0,
        7.5,
        10.0,
    )
    OUTCOMES = ("success", "error")

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        executions = Counter(
            "ml_model_executions_total",
            "Model executions by outcome",
            ["pipeline", "stage", "model_name", "outcome"],
        )
        duration = Histogram(
            "ml_model_execution_duration_seconds",
            "Wall-clock time of one model execution",
            ["pipeline", "stage", "model_name"],
            buckets=self.DURATION_BUCKETS,
        )
        confidence_score = Gauge(
            "ml_model_confidence_score",
            "Confidence of the model's latest successful execution",
            ["pipeline", "model_name"],
        )
        confidence = Histogram(
            "ml_model_confidence",
            "Distribution of model confidence in [0, 1]",
            ["pipeline", "model_name"],
            buckets=self.CONFIDENCE_BUCKETS,
        )
        selected = Counter(
            "ml_model_selected_total",
            "Times a parallel stage selected the model's output",
            ["pipeline", "stage", "model_name"],
        )
        self.errors = Counter(
            "ml_model_errors_total",
            "Failed model executions by error type",
            ["pipeline", "model_name", "error_type"],
        )
        loaded = Gauge(
            "ml_model_loaded",
            "1 while the model is loaded in a pipeline",
            ["pipeline", "model_name", "model_version"],
        )
        runs = Counter(
            "ml_pipeline_runs_total", "Pipeline runs by outcome", ["pipeline", "outcome"]
        )
        run_duration = Histogram(
            "ml_pipeline_duration_seconds",
            "Wall-clock time of one pipeline run",
            ["pipeline"],
            buckets=self.DURATION_BUCKETS,
        )
        self.http_duration = Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests",
            ["http_request_method", "http_route", "http_response_status_code"],
            buckets=self.HTTP_BUCKETS,
        )
        self.http_active = Gauge(
            "http_server_active_requests",
            "Number of active HTTP server requests",
            ["http_request_method"],
        )
        self.model = {}
        for m in CANDIDATES:
            self.model[m.name] = (
                {o: executions.labels(PIPELINE, STAGE, m.name, o) for o in self.OUTCOMES},
                duration.labels(PIPELINE, STAGE, m.name),
                confidence_score.labels(PIPELINE, m.name),
                confidence.labels(PIPELINE, m.name),
                selected.labels(PIPELINE, STAGE, m.name),
            )
            loaded.labels(PIPELINE, m.name, m.version).set(1)
        self.runs = {o: runs.labels(PIPELINE, o) for o in ("success", "failure")}
        self.run_duration = run_duration.labels(PIPELINE)
        self._http: dict[tuple[str, str, int], Any] = {}

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        child = self._http.get(key)
        if child is None:
            child = self._http[key] = self.http_duration.labels(method, route, str(status))
        child.observe(seconds)


class HttpMetrics:
    """ASGI middleware recording the HTTP server metrics with
    prometheus_client (a plain ASGI middleware: Starlette's
    BaseHTTPMiddleware would add a task and a stream per request)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        active = metrics.http_active.labels(method)
        active.inc()
        status = 500
        started = time.perf_counter()

        async def send_and_watch(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            seconds = time.perf_counter() - started
            active.dec()
            route = scope.get("route")
            metrics.http_request(method, getattr(route, "path", ""), status, seconds)


def _hex_trace_id(span: Any) -> str | None:
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


async def _run_candidate_observed(model: FixedModel, features: list[float]) -> Result:
    executions, duration, confidence_score, confidence, _ = metrics.model[model.name]
    with tracer.start_as_current_span(
        "model.run",
        attributes={
            "stage.name": STAGE,
            "model.name": model.name,
            "model.version": model.version,
            "model.kind": "async",
        },
    ) as span:
        started = time.perf_counter()
        try:
            prediction = await model.run(features)
        except Exception as exc:  # a failing model is an outcome, not a crash
            seconds = time.perf_counter() - started
            span.set_attribute("model.outcome", "error")
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            executions["error"].inc()
            duration.observe(seconds)
            metrics.errors.labels(PIPELINE, model.name, "computation").inc()
            log.error(
                "model failed",
                pipeline=PIPELINE,
                stage=STAGE,
                model_name=model.name,
                error=str(exc),
            )
            return model, None, _model_report(model, "error", None, seconds, str(exc))
        seconds = time.perf_counter() - started
        span.set_attribute("model.outcome", "success")
        span.set_attribute("model.confidence", prediction.confidence)
    executions["success"].inc()
    duration.observe(seconds)
    confidence_score.set(prediction.confidence)
    confidence.observe(prediction.confidence)
    return model, prediction, _model_report(model, "success", prediction, seconds)


async def run_pipeline_observed(features: list[float]) -> dict[str, Any]:
    started = time.perf_counter()
    with tracer.start_as_current_span(
        "pipeline.run", attributes={"pipeline.name": PIPELINE}
    ) as run_span:
        trace_id = _hex_trace_id(run_span)
        with tracer.start_as_current_span(
            "stage.run",
            attributes={"pipeline.name": PIPELINE, "stage.name": STAGE, "stage.kind": "parallel"},
        ) as stage_span:
            stage_started = time.perf_counter()
            results = list(
                await asyncio.gather(*(_run_candidate_observed(m, features) for m in CANDIDATES))
            )
            winner = _select(results)
            stage_seconds = time.perf_counter() - stage_started
            if winner is not None:
                stage_span.set_attribute("stage.selected_model", winner[0].name)
                metrics.model[winner[0].name][4].inc()
            else:
                stage_span.set_status(
                    Status(StatusCode.ERROR, f"no model of stage `{STAGE}` succeeded")
                )
        run_seconds = time.perf_counter() - started
        if winner is None:
            error = PipelineFailed(_failures(results), trace_id)
            run_span.set_attribute("pipeline.outcome", "failure")
            run_span.set_status(Status(StatusCode.ERROR, str(error)))
            metrics.runs["failure"].inc()
            metrics.run_duration.observe(run_seconds)
            log.error("pipeline failed", pipeline=PIPELINE, stage=STAGE, error=str(error))
            raise error
        run_span.set_attribute("pipeline.outcome", "success")
        metrics.runs["success"].inc()
        metrics.run_duration.observe(run_seconds)
        # The one INFO line of a run, as pipelens logs it.
        log.info(
            "pipeline completed",
            pipeline=PIPELINE,
            selected=f"{STAGE}={winner[0].name}",
            duration_ms=run_seconds * 1e3,
        )
    return _report(trace_id, run_seconds, stage_seconds, results, winner)


def _add_trace_context(_logger: Any, _method: str, event_dict: dict) -> dict:
    """structlog processor: the current span's ids on every line."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def _otlp_configured(signal: str) -> bool:
    return bool(
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip()
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def setup_telemetry(app: FastAPI) -> list[Any]:
    """Metrics, structlog JSON on stdout, OTel traces and logs; returns the
    providers to shut down (flush) on exit."""
    global tracer, log, metrics

    import structlog
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    metrics = Metrics()
    app.add_middleware(HttpMetrics)

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by the SDK.
    attributes = (
        {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "fixed-three-fastapi"}
    )
    resource = Resource.create(attributes)
    providers: list[Any] = []

    # The sampler comes from OTEL_TRACES_SAMPLER / _ARG (the SDK's default is
    # parentbased_always_on, as in pipelens).
    tracer_provider = TracerProvider(resource=resource)
    if _otlp_configured("TRACES"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    providers.append(tracer_provider)
    tracer = trace.get_tracer("fixed-three")

    # The server span per request, continuing the caller's traceparent; the
    # probes and /metrics are not traced (pipelens traces them at DEBUG), nor
    # are the ASGI receive/send steps (pipelens has no spans for them), so
    # both services make the same six spans per run.
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tracer_provider,
        excluded_urls="/health,/ready,/metrics",
        exclude_spans=["receive", "send"],
    )

    # structlog as in seeds/001, through the stdlib logging module: one JSON
    # line per event on stdout and, with an OTLP endpoint, the same line as
    # the body of an OTel log record carrying the span's ids.
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    stdout = logging.StreamHandler(sys.stdout)
    stdout.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(stdout)
    if _otlp_configured("LOGS"):
        from opentelemetry._logs import set_logger_provider
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
        set_logger_provider(logger_provider)
        root.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logger_provider))
        providers.append(logger_provider)
    # The exporters' own logs must not feed the exporters.
    for name in ("opentelemetry", "urllib3", "requests"):
        own = logging.getLogger(name)
        own.propagate = False
        own.addHandler(logging.StreamHandler(sys.stderr))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_trace_context,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.UnicodeDecoder(),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    log = structlog.get_logger("fixed_three")
    return providers


# --- The app. ---

_providers: list[Any] = []


@asynccontextmanager
async def lifespan(_app: FastAPI):
    yield
    # Flush what the batch processors still hold (SIGTERM lands here).
    for provider in _providers:
        provider.shutdown()


app = FastAPI(
    title="fixed-three", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
)
run_pipeline = run_pipeline_observed if TELEMETRY else run_pipeline_bare


def _current_trace_id() -> str | None:
    if not TELEMETRY:
        return None
    return _hex_trace_id(trace.get_current_span())


def _error(
    status: int, code: str, message: str, trace_id: str | None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra, "trace_id": trace_id}},
        status_code=status,
    )


def _field_path(loc: tuple) -> str:
    """`("body", "features", 3)` → `features[3]`, as serde_path_to_error names it."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "."


@app.exception_handler(RequestValidationError)
async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return _error(
            400, "malformed_json", f"malformed JSON: {first.get('msg')}", _current_trace_id()
        )
    field = _field_path(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid")
    return _error(
        422,
        "invalid_field",
        f"invalid field `{field}`: {message}",
        _current_trace_id(),
        field=field,
    )


@app.exception_handler(PipelineFailed)
async def pipeline_failed(_request: Request, exc: PipelineFailed) -> JSONResponse:
    return _error(500, "pipeline_failed", str(exc), exc.trace_id, stage=STAGE, models=exc.failures)


@app.post(RUNS_ROUTE)
async def create_run(request: RunRequest) -> dict[str, Any]:
    return await run_pipeline(request.features)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/ready")
async def ready() -> dict[str, Any]:
    return {"status": "ready"}


@app.get("/metrics")
async def metrics_endpoint() -> Response:
    if not TELEMETRY:
        return Response(content=b"", media_type="text/plain; version=0.0.4; charset=utf-8")
    return Response(content=generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _parse_addr(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SystemExit(f"invalid BENCH_ADDR={value!r}: expected host:port")
    return host.strip("[]"), int(port)


def main() -> None:
    import uvicorn

    host, port = _parse_addr(os.environ.get("BENCH_ADDR", "").strip() or DEFAULT_ADDR)
    # One worker; uvloop and httptools when installed ("auto"); no access log.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=1,
        loop="auto",
        http="auto",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )
    # After uvicorn.Config, which configures the logging module.
    if TELEMETRY:
        _providers.extend(setup_telemetry(app))
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
