"""LoopML's serving process: ONE BentoML service (``LoopML``) hosting every function.

Start it from the repository root (``LOOPML_HOME`` and ``BENTOML_HOME`` set, loopback, port from
``LOOPML_SERVING_PORT``)::

    bentoml serve serving.service:LoopML --host 127.0.0.1 --port 3100

Endpoints (all under ``/v1`` except BentoML's probes), documented at ``/docs`` (Swagger UI, served from
BentoML's bundled assets, no CDN) and ``/openapi.json``:

* ``POST /v1/functions/{name}/invoke``: ``{"text": ...}`` or ``{"texts": [...]}`` (text functions),
  ``{"image": ...}`` or ``{"images": [...]}`` (base64 / data URIs) or a multipart file upload (image functions),
  optional ``sticky_key``;
* ``POST /v1/invocations/{invocation_id}/feedback``: flag an answer and/or give the true label;
* ``GET /v1/functions`` and ``GET /v1/functions/{name}``: serving versions and weights;
* ``GET /v1/health`` (JSON) and BentoML's ``/livez``, ``/healthz``, ``/readyz`` (ready once the deployments
  are loaded).

Why a mounted FastAPI app rather than ``@bentoml.api`` routes: BentoML API routes are POST-only, have no path
parameters and answer validation errors with 400; FastAPI gives path parameters, GET listings, 422 errors
naming the field and an OpenAPI document with examples, and BentoML merges it into its own spec. BentoML's
adaptive batching (``@bentoml.api(batchable=True)``) is reachable only through its HTTP route, not from a
mounted app's handler, so the encoder is batched by :class:`serving.runtime.ModelRuntime`'s in-process
micro-batcher instead (same idea: whatever waits is batched, up to ``LOOPML_SCORING_BATCH`` texts).

Every endpoint but the probes (and the documentation pages, unless ``LOOPML_SERVING_PUBLIC_DOCS=0``) needs an
API key (:mod:`loopml.apikeys`): ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

Environment: ``LOOPML_MAX_TEXT_BYTES`` (1 MiB), ``LOOPML_MAX_IMAGE_BYTES`` (10 MiB per encoded image),
``LOOPML_MAX_IMAGE_PIXELS`` (40 million per image), ``LOOPML_MAX_BATCH`` (256 inputs per request),
``LOOPML_MAX_REQUEST_BYTES`` (largest request body, default 16 MiB or twice the text limit),
``LOOPML_SCORING_BATCH`` (64 texts per adaptive batch), ``LOOPML_SCORING_LANES`` (batches scored side by
side; one per core, at most 4), ``LOOPML_ENCODER_BATCH`` (texts per encoder run;
16 on the CPU, the scoring batch on CUDA), ``LOOPML_SERVING_GPU`` (``auto``: ask BentoML for a GPU when an
NVIDIA device is present; ``0``: never, and hide GPUs from onnxruntime; ``1``: always),
``LOOPML_SERVING_PUBLIC_DOCS`` (``1``: ``/docs`` and ``/openapi.json`` need no key),
``LOOPML_SERVING_ACCESS_LOG`` (``errors``: log failed requests; ``all``: BentoML's access log; ``off``) and
``LOOPML_SERVING_TRACING`` (``1``: OpenTelemetry spans for the API routes too).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import bentoml
from fastapi import Body, Depends, FastAPI, HTTPException, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    model_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loopml.apikeys import KeyGrant, KeyStoreUnavailable, verifier_for
from loopml.config import DEFAULT_MAX_TEXT_BYTES, Settings, get_settings, gpu_mode
from loopml.config import env_int as _env_int
from loopml.encoders import encoder_input_type
from loopml.functions import NAME_PATTERN
from loopml.images import ImageError, ImageLimits, ImageTooLarge, decode_image, thumbnail_uri
from loopml.invocation_log import (
    FeedbackError,
    FeedbackForbidden,
    InvocationLog,
    InvocationLogError,
    InvocationNotFound,
    InvocationRecord,
    embedding_to_bytes,
)
from loopml.loop_signals import mark_annotations_changed
from serving.request_body import INLINE_BYTES, BodyError, bounded_errors, read_json
from serving.runtime import (
    ROLE_CANARY,
    FunctionServing,
    ModelRuntime,
    NotDeployedError,
    RuntimeNotReadyError,
    Scored,
    UnknownFunctionError,
)

API_VERSION = "1"
access_logger = logging.getLogger("loopml.serving.access")
DEFAULT_MAX_BATCH = 256
PROBE_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/v1/health"})
DOC_PATHS = frozenset({"/", "/docs", "/openapi.json", "/docs.json", "/schema.json"})
DOC_PREFIXES = ("/static_content/",)
_FALSE = ("0", "false", "no", "off")
SMALL_BODY_BYTES = 64 << 10  # bodies of the routes other than invoke (feedback, hooks): FastAPI decodes them


# --- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """Request limits, read from the environment when the service starts."""

    max_text_bytes: int
    max_batch: int
    max_request_bytes: int
    scoring_batch: int
    encoder_batch: int | None
    image: ImageLimits = ImageLimits()

    @classmethod
    def from_env(cls) -> Limits:
        max_text = _env_int("LOOPML_MAX_TEXT_BYTES", DEFAULT_MAX_TEXT_BYTES)
        return cls(
            image=ImageLimits.from_env(),
            max_text_bytes=max_text,
            max_batch=_env_int("LOOPML_MAX_BATCH", DEFAULT_MAX_BATCH),
            max_request_bytes=_env_int("LOOPML_MAX_REQUEST_BYTES", max(16 << 20, 2 * max_text + (64 << 10))),
            scoring_batch=_env_int("LOOPML_SCORING_BATCH", 64),
            encoder_batch=_env_int("LOOPML_ENCODER_BATCH", 0) or None,
        )


def _resources() -> dict[str, Any]:
    """Ask BentoML for one GPU when one is wanted and present (BentoML then sets CUDA_VISIBLE_DEVICES)."""
    mode = gpu_mode()
    if mode == "on" or (mode == "auto" and os.path.exists("/dev/nvidiactl")):
        return {"gpu": 1}
    return {}


def public_docs() -> bool:
    return os.environ.get("LOOPML_SERVING_PUBLIC_DOCS", "1").strip().lower() not in _FALSE


def access_log_mode() -> Literal["errors", "all", "off"]:
    """``LOOPML_SERVING_ACCESS_LOG``: ``errors`` (default) logs the requests answered with a 4xx/5xx status,
    ``all`` turns on BentoML's access log of every request, ``off`` logs none.

    Every answered invocation is already in the invocation log (with its latency and key id), and on a
    small CPU a log line per request costs about a tenth of single-text throughput.
    """
    mode = os.environ.get("LOOPML_SERVING_ACCESS_LOG", "errors").strip().lower()
    if mode in _FALSE:
        return "off"
    if mode in ("all", "1", "true", "yes", "on"):
        return "all"
    return "errors"


def _tracing() -> dict[str, Any]:
    """BentoML's OpenTelemetry spans for the ``/v1`` API only with ``LOOPML_SERVING_TRACING=1`` (and an
    exporter configured in BentoML's configuration); LoopML configures no exporter, so by default the API
    routes skip span creation."""
    if os.environ.get("LOOPML_SERVING_TRACING", "0").strip().lower() in _FALSE:
        return {"excluded_urls": ["/v1/"]}
    return {}


class FailedRequestLogMiddleware:
    """Logs each request answered with a status of 400 or more (method, path, status, milliseconds, key id)
    on the ``loopml.serving.access`` logger; see :func:`access_log_mode`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            if status >= 400:
                access_logger.warning(
                    "%s %s -> %d in %.1f ms (key %s)",
                    scope.get("method", "?"),
                    scope.get("path", "?"),
                    status,
                    (time.perf_counter() - started) * 1000.0,
                    scope.get("state", {}).get("key_id") or "-",
                )


class JsonErrorMiddleware:
    """Answers in the documented JSON error shape where BentoML's own router would answer plain text: a path no
    route serves (404) or a method a route does not take (405)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None

        async def rewrite(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] in (404, 405):
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if content_type.startswith(b"text/plain"):
                    held = message
                    return
            if held is not None and message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                status = int(held["status"])
                path, method = scope.get("path", "?"), scope.get("method", "?")
                detail = (
                    f"no route {path!r}: see /docs for the API"
                    if status == 404
                    else f"{path!r} does not take {method}: see /docs for the API"
                )
                body = _error_body("not_found" if status == 404 else "method_not_allowed", detail)
                headers = [(k, v) for k, v in held.get("headers", []) if k not in (b"content-type", b"content-length")]
                await _send_json(send, status, body, headers)
                held = None
                return
            await send(message)

        await self.app(scope, receive, rewrite)


# --- authentication -----------------------------------------------------------------------------
def _error_body(error: str, detail: Any) -> bytes:
    import json

    return json.dumps({"error": error, "detail": detail}).encode()


async def _send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """ASGI middleware: an API key on every request except the probes (and the docs when public).

    Accepts ``Authorization: Bearer <key>`` and ``X-API-Key: <key>``; answers 401 JSON otherwise. Puts the
    key id in ``scope["state"]["key_id"]`` for the invocation log. Also refuses request bodies over
    ``LOOPML_MAX_REQUEST_BYTES`` with 413 before they are read.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._settings: Settings | None = None
        self._limits: Limits | None = None
        self._public_docs = public_docs()

    def _config(self) -> tuple[Settings, Limits]:
        if self._settings is None or self._limits is None:
            self._settings, self._limits = get_settings(), Limits.from_env()
        return self._settings, self._limits

    def _is_public(self, path: str) -> bool:
        if path in PROBE_PATHS:
            return True
        return self._public_docs and (path in DOC_PATHS or path.startswith(DOC_PREFIXES))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._is_public(scope.get("path", "")):
            await self.app(scope, receive, send)  # lifespan, probes, docs
            return
        settings, limits = self._config()
        headers = {name.lower(): value for name, value in scope.get("headers", [])}
        secret = _key_from_headers(headers)
        if scope["type"] == "websocket":  # none are served; refuse any without a valid key all the same
            verifier = verifier_for(settings)
            if secret is None or await asyncio.to_thread(verifier.verify, secret) is None:  # any valid key
                await send({"type": "websocket.close", "code": 1008, "reason": "missing or invalid API key"})
                return
            await self.app(scope, receive, send)
            return
        if secret is None and scope["type"] == "http" and await self._signed_report(scope, receive, send, settings):
            return
        if secret is None:
            await _send_json(
                send,
                401,
                _error_body(
                    "unauthorized",
                    "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                    "(create a key with `loopml keys create NAME`)",
                ),
                [(b"www-authenticate", b'Bearer realm="loopml"')],
            )
            return
        verifier = verifier_for(settings)
        hit, grant = verifier.cached(secret)
        if not hit:  # a database lookup: keep it off the event loop
            try:
                grant = await asyncio.to_thread(verifier.verify, secret)
            except KeyStoreUnavailable as error:
                await _send_json(send, 503, _error_body("unavailable", str(error)), [(b"retry-after", b"5")])
                return
        if grant is None:
            await _send_json(
                send,
                401,
                _error_body("unauthorized", "invalid or revoked API key: check the key or create a new one"),
                [(b"www-authenticate", b'Bearer realm="loopml", error="invalid_token"')],
            )
            return
        path = scope.get("path", "")
        if not path.startswith("/v1/") and not grant.allows("admin"):  # BentoML's own routes (/metrics, ...)
            await _send_json(
                send,
                403,
                _error_body("forbidden", f"{path!r} needs a key with the admin right (this key: {grant.describe()})"),
            )
            return
        length = headers.get(b"content-length")
        invoking = scope.get("path", "").endswith("/invoke")
        limit = limits.max_request_bytes if invoking else SMALL_BODY_BYTES
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_json(
                send,
                413,
                _error_body(
                    "request_too_large",
                    f"the request body is {int(length):,} bytes; the limit is {limit:,} "
                    + ("(LOOPML_MAX_REQUEST_BYTES): split the batch" if invoking else "for this route"),
                ),
            )
            return
        scope.setdefault("state", {}).update(key_id=grant.key_id, grant=grant)
        if length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            receive = await _bounded_body(receive, send, limit)
            if receive is None:
                return
        await self.app(scope, receive, send)

    async def _signed_report(self, scope: Scope, receive: Receive, send: Send, settings: Settings) -> bool:
        """A keyless GET of a report with a signed link (``loopml.report_links``): serve it (True), refuse an
        invalid or expired link with 401 (True), or leave a request without one to the key check (False)."""
        from urllib.parse import parse_qs

        from loopml import report_links

        match = report_links.ROUTE_PATTERN.match(scope.get("path", ""))
        if match is None or scope.get("method") not in ("GET", "HEAD"):
            return False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "signature" not in query:
            return False
        expires, given = query.get("expires", [""])[0], query["signature"][0]
        if not await asyncio.to_thread(report_links.verify, settings, scope["path"], expires, given):
            await _send_json(
                send,
                401,
                _error_body(
                    "unauthorized",
                    "this report link is invalid or has expired: open the report from the asset's latest "
                    "materialization in Dagster for a fresh link, or send an API key",
                ),
            )
            return True
        scope.setdefault("state", {}).update(report_link=match.group(1))
        await self.app(scope, receive, send)
        return True


def _key_from_headers(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


async def _bounded_body(receive: Receive, send: Send, limit: int) -> Receive | None:
    """Read a body without Content-Length up to ``limit`` bytes and replay it; 413 (and None) past it."""
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return receive
        total += len(message.get("body", b""))
        if total > limit:
            await _send_json(
                send,
                413,
                _error_body(
                    "request_too_large",
                    f"the request body exceeds {limit:,} bytes (LOOPML_MAX_REQUEST_BYTES)",
                ),
            )
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# --- request and response models ----------------------------------------------------------------
FunctionName = Annotated[
    str,
    Path(
        description="The function's name, as in `loopml functions list`.",
        examples=["review-sentiment"],
        max_length=64,
    ),
]


# a character that shows: not white space, not a C0/C1 control, not a zero-width or bidi control
_VISIBLE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _not_blank(value: str) -> str:
    lone = _SURROGATE.search(value)
    if lone is not None:
        raise ValueError(
            f"the text holds a lone surrogate (\\u{ord(lone.group()):04x} at character {lone.start()}), which is not "
            "Unicode text: encode characters outside the BMP as a surrogate pair or as UTF-8"
        )
    if _VISIBLE.search(value) is None:
        raise ValueError("the text is empty (only spaces or control characters): send the text to classify")
    return value


InputText = Annotated[StrictStr, AfterValidator(_not_blank)]


def _not_blank_image(value: str) -> str:
    if not value.strip():
        raise ValueError("the image is empty: send it base64-encoded or as a data:image/...;base64 URI")
    return value


InputImage = Annotated[StrictStr, AfterValidator(_not_blank_image)]
ONE_OF = (
    "give exactly one of 'text' (one input) or 'texts' (a batch) for a text function, 'image' or 'images' for an "
    "image function"
)


class InvokeRequest(BaseModel):
    """One text (``text``) or a batch (``texts``), one image (``image``) or a batch (``images``), optionally with
    a sticky routing key. Images are base64 text or ``data:image/...;base64,`` URIs; an image file can also be
    uploaded as ``multipart/form-data`` to the same route."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "A warm, funny and beautifully acted film."},
                {"texts": ["Loved it.", "A tedious mess."], "sticky_key": "user-42"},
                {"image": "data:image/png;base64,iVBORw0KGgo..."},
            ],
            "oneOf": [  # exactly one of them is given and not null
                {"required": [name], "properties": {name: {"type": kind}}}
                for name, kind in (("text", "string"), ("texts", "array"), ("image", "string"), ("images", "array"))
            ],
        },
    )

    text: InputText | None = Field(None, description="One input text (not empty).")
    texts: list[InputText] | None = Field(
        None,
        min_length=1,
        description="A batch of input texts (each not empty); one answer per text, in order.",
    )
    image: InputImage | None = Field(
        None,
        description="One input image (image functions): base64 or a data:image/...;base64 URI of a PNG, JPEG, "
        "WebP or GIF file.",
    )
    images: list[InputImage] | None = Field(
        None, min_length=1, description="A batch of input images (each as `image`); one answer per image, in order."
    )
    sticky_key: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Route every call with this key to the same version (primary or canary), e.g. a user id.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> InvokeRequest:
        if sum(value is not None for value in (self.text, self.texts, self.image, self.images)) != 1:
            raise ValueError(ONE_OF)
        return self

    def inputs(self) -> Inputs:
        """What to classify, whatever field it came in."""
        if self.image is not None or self.images is not None:
            one = self.image is not None
            return Inputs("image", [self.image] if one else list(self.images or []), one, self.sticky_key)
        one = self.text is not None
        return Inputs("text", [self.text] if one else list(self.texts or []), one, self.sticky_key)


@dataclass(frozen=True)
class Inputs:
    """The inputs of one invoke request: texts, or images (base64 text or uploaded bytes)."""

    kind: Literal["text", "image"]
    values: list[Any]
    single: bool  # `text` / `image` / one uploaded `image` file: one result, not a list
    sticky_key: str | None = None
    uploads: list[str] | None = None  # the uploaded files' names (multipart), for error messages

    def field(self, i: int) -> str:
        """How the ``i``-th input is named in an error message."""
        if self.uploads is not None:
            return f"file {self.uploads[i]!r}"
        if self.single:
            return self.kind
        return f"{self.kind}s[{i}]"


class InvokeResult(BaseModel):
    """The answer to one text."""

    invocation_id: str = Field(description="Use it to send feedback on this answer.")
    function: str
    label: str = Field(description="The answering version's most probable label.")
    confidence: float = Field(description="Calibrated probability of `label`.")
    scores: dict[str, float] = Field(description="Calibrated probability of every label of the answering version.")
    version: str = Field(description="The model version that answered, e.g. `review-sentiment:v3`.")
    role: Literal["primary", "canary"] = Field(description="Whether the primary or the canary answered.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "invocation_id": "0b8e7a4e-3f59-4d5e-9a51-0a1f0e2c9a77",
                    "function": "review-sentiment",
                    "label": "positive",
                    "confidence": 0.93,
                    "scores": {"positive": 0.93, "negative": 0.07},
                    "version": "review-sentiment:v3",
                    "role": "primary",
                }
            ]
        }
    )


class BatchInvokeResponse(BaseModel):
    """The answers to a batch, in input order."""

    function: str
    results: list[InvokeResult]


class FeedbackRequest(BaseModel):
    """Flag an answer as wrong and/or give the true label (at least one of them)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"flagged": True, "true_label": "negative"},
                {"flagged": True, "comment": "sarcasm"},
            ],
            "anyOf": [
                {"required": ["flagged"], "properties": {"flagged": {"const": True}}},
                {"required": ["true_label"]},
            ],
        },
    )

    flagged: StrictBool = Field(False, description="The answer was wrong.")
    true_label: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="The correct label (one of the answering version's labels).",
    )
    comment: StrictStr = Field("", max_length=2000, description="Free text for the reviewers.")


class FeedbackResponse(BaseModel):
    feedback_id: int
    invocation_id: str
    function: str
    flagged: bool
    true_label: str | None
    answered_by: str = Field(description="The version whose answer the feedback is about.")
    answered_label: str


class HookResponse(BaseModel):
    function: str
    accepted: bool = Field(description="The change was noted; the annotation sensor looks within about a second.")


class VersionInfo(BaseModel):
    version: str
    weight: float = Field(description="Share of answers this version gives.")
    labels: list[str]


class FunctionInfo(BaseModel):
    name: str
    status: Literal["serving", "canary", "not_deployed", "error"]
    primary: VersionInfo | None
    canary: VersionInfo | None
    encoder_id: str
    revision: int
    error: str | None = None


class FunctionsResponse(BaseModel):
    revision: int = Field(description="The deployment revision this process serves.")
    functions: list[FunctionInfo]


class ReportInfo(BaseModel):
    name: str = Field(description="The report's file name.", examples=["drift-20261206T120000.html"])
    path: str = Field(description="Its route on this API (send an API key).")


class ReportsResponse(BaseModel):
    function: str
    reports: list[ReportInfo] = Field(description="Newest first.")


class HealthResponse(BaseModel):
    status: Literal["ok", "loading"]
    ready: bool
    revision: int
    functions: int
    device: str
    invocation_backlog: int = Field(description="Invocations answered but not yet committed.")
    scoring_batches: int = Field(description="Batches the encoder ran since start.")
    mean_batch_size: float = Field(description="Texts per encoder batch since start (adaptive batching).")


class FieldError(BaseModel):
    field: str = Field(description="The offending field, e.g. `texts[3]` or `sticky_key` (`body`: the whole body).")
    loc: list[str | int]
    message: str
    type: str


class ErrorResponse(BaseModel):
    error: str = Field(description="A short code: unauthorized, not_found, invalid_request, request_too_large, ...")
    detail: Any = Field(description="What went wrong and what to do next.")
    errors: list[FieldError] | None = Field(
        None, description="422 only: one entry per invalid field (the first 10; `errors_left_out` counts the rest)."
    )
    errors_left_out: int | None = Field(None, description="422 only: invalid fields not listed in `errors`.")


_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    401: (
        "Missing, invalid or revoked API key.",
        {
            "error": "unauthorized",
            "detail": "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
            "(create a key with `loopml keys create NAME`)",
        },
    ),
    403: (
        "The API key lacks the right, or the function is outside its scope (`loopml keys create --rights "
        "--functions`).",
        {
            "error": "forbidden",
            "detail": "this API key may not invoke 'news-topic' (it has: invoke,feedback on review-sentiment)",
        },
    ),
    404: (
        "Unknown function or invocation (the message lists the known functions).",
        {
            "error": "not_found",
            "detail": "unknown function 'review-sentimnet' (known functions: news-topic, review-sentiment); "
            "create it with `loopml functions create`",
        },
    ),
    413: (
        "A text over LOOPML_MAX_TEXT_BYTES, a batch over LOOPML_MAX_BATCH or a body over LOOPML_MAX_REQUEST_BYTES.",
        {
            "error": "request_too_large",
            "detail": "the batch has 300 texts; the limit is 256 (LOOPML_MAX_BATCH): split it into smaller requests",
        },
    ),
    422: (
        "Invalid request: the message names the field.",
        {
            "error": "invalid_request",
            "detail": "texts[1]: the text is empty: send the text to classify",
            "errors": [
                {
                    "field": "texts[1]",
                    "loc": ["body", "texts", 1],
                    "message": "the text is empty: send the text to classify",
                    "type": "value_error",
                }
            ],
        },
    ),
    503: (
        "No deployed version, still loading, or the invocation log is unavailable; retry later.",
        {
            "error": "unavailable",
            "detail": "function 'news-topic' has no deployed model version yet: label examples and let the "
            "pipeline train and deploy one (or deploy a version explicitly), then retry",
        },
    ),
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries (with an example each) for the error answers of a route."""
    return {
        code: {
            "model": ErrorResponse,
            "description": _ERRORS[code][0],
            "content": {"application/json": {"example": _ERRORS[code][1]}},
        }
        for code in codes
    }


# --- the FastAPI app ------------------------------------------------------------------------------
app = FastAPI(
    title="LoopML serving API",
    version=API_VERSION,
    description=(
        "Invoke LoopML functions, send feedback on answers, and see which model versions serve. "
        "Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>` (use **Authorize**)."
    ),
    docs_url=None,
    redoc_url=None,
    openapi_url="/openapi.json",
    openapi_tags=[
        {"name": "invoke", "description": "Classify texts with a function."},
        {"name": "feedback", "description": "Tell LoopML an answer was wrong."},
        {"name": "functions", "description": "What is deployed."},
        {"name": "health", "description": "Probes (no API key needed)."},
        {"name": "hooks", "description": "Webhooks that Label Studio calls (set up by LoopML)."},
        {"name": "reports", "description": "HTML reports of a function (drift), for a key or a signed link."},
    ],
)
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <key>`")
# The middleware enforces the key; these declare it in the OpenAPI document (Swagger UI's Authorize button).
AUTH = [Security(_bearer), Security(_api_key)]


def _field(error: dict[str, Any]) -> str:
    """``texts[3]``, ``sticky_key``, ``body`` (the whole body) or ``name`` (a path parameter)."""
    loc = list(error.get("loc", ()))
    if error.get("type") == "json_invalid" or not loc:
        return "body"
    if loc[0] in ("body", "path", "query", "header"):
        loc = loc[1:]
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _message(error: dict[str, Any]) -> str:
    message = str(error.get("msg", ""))
    if error.get("type") == "json_invalid":
        position = error.get("loc", ("", "?"))[-1]
        return f"the body is not valid JSON (at character {position}): send a JSON object"
    return message.removeprefix("Value error, ")


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {
            "field": _field(e),
            "loc": list(e.get("loc", ())),
            "message": _message(e),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    shown, left_out = bounded_errors(errors)
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in shown)
    body: dict[str, Any] = {"error": "invalid_request", "detail": summary, "errors": shown}
    if left_out:
        body["detail"] += f"; and {left_out:,} more errors"
        body["errors_left_out"] = left_out
    return JSONResponse(body, status_code=422)


_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    422: "invalid_request",
    503: "unavailable",
}


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:  # FastAPI could not decode a JSON body (invalid UTF-8, too deep, not JSON)
        return JSONResponse(
            {"error": "invalid_request", "detail": "the body is not valid UTF-8 JSON: send a JSON object"},
            status_code=422,
        )
    return JSONResponse(
        {"error": _CODES.get(exc.status_code, "error"), "detail": exc.detail},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def _openapi() -> dict[str, Any]:
    """FastAPI's document, plus the JSON invoke body (read by :meth:`LoopML.invoke_request`, not by FastAPI)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        request = InvokeRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request.pop("$defs", {}))
        components["InvokeRequest"] = request
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]


@app.get("/", include_in_schema=False)
async def _index() -> RedirectResponse:
    return RedirectResponse("/docs")


@app.get("/docs", include_in_schema=False)
async def _docs() -> HTMLResponse:
    """Swagger UI from BentoML's bundled assets (works offline, no tracking)."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="LoopML serving API",
        swagger_js_url="/static_content/swagger-ui-bundle.js",
        swagger_css_url="/static_content/swagger-ui.css",
        swagger_favicon_url="/static_content/favicon-light-32x32.png",
    )


def _serving_info(serving: FunctionServing) -> FunctionInfo:
    primary = canary = None
    if serving.primary is not None:
        primary = VersionInfo(
            version=serving.primary.tag,
            weight=1.0 - serving.canary_weight,
            labels=list(serving.primary.label_set),
        )
    if serving.canary is not None:
        canary = VersionInfo(
            version=serving.canary.tag, weight=serving.canary_weight, labels=list(serving.canary.label_set)
        )
    if serving.primary is None:
        status = "error" if serving.error else "not_deployed"
    else:
        status = "canary" if canary is not None else "serving"
    return FunctionInfo(
        name=serving.function,
        status=status,
        primary=primary,
        canary=canary,
        encoder_id=serving.encoder_id,
        revision=serving.revision,
        error=serving.error,
    )


def _result(function: str, invocation_id: str, item: Scored) -> InvokeResult:
    return InvokeResult(
        invocation_id=invocation_id,
        function=function,
        label=item.label,
        confidence=item.confidence,
        scores=item.scores,
        version=item.answered_by,
        role="canary" if item.role == ROLE_CANARY else "primary",
    )


INVOKE_EXAMPLES = {
    "one": {"summary": "One text", "value": {"text": "A warm, funny and beautifully acted film."}},
    "batch": {"summary": "A batch", "value": {"texts": ["Loved it.", "A tedious mess."]}},
    "sticky": {
        "summary": "Sticky routing",
        "description": "Every call with the same key is answered by the same version during a canary.",
        "value": {"text": "Not bad at all.", "sticky_key": "user-42"},
    },
}
FEEDBACK_EXAMPLES = {
    "label": {"summary": "Wrong, with the true label", "value": {"flagged": True, "true_label": "negative"}},
    "flag": {"summary": "Just flag it", "value": {"flagged": True, "comment": "sarcasm"}},
}


# --- the BentoML service ------------------------------------------------------------------------
@bentoml.service(
    name="LoopML",
    resources=_resources(),
    workers=1,
    traffic={"timeout": 120},
    logging={"access": {"enabled": access_log_mode() == "all"}},
    tracing=_tracing(),
    http={"host": "127.0.0.1", "port": get_settings().serving_port},
)
@bentoml.asgi_app(app, path="/")
class LoopML:
    """Every LoopML function behind one authenticated HTTP API (see the module docstring).

    The endpoints below are module-level FastAPI functions that reach this instance through the async
    :func:`current_service` dependency (``app.state``) rather than BentoML's class views, whose ``self``
    dependency is a sync function that FastAPI runs in a worker thread on every request.
    """

    def __init__(self) -> None:
        if gpu_mode() == "off":
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before any encoder session is created
        self.settings = get_settings()
        self.settings.ensure_dirs()
        self.limits = Limits.from_env()
        self.runtime = ModelRuntime(
            self.settings,
            max_batch_size=self.limits.scoring_batch,
            encoder_batch_size=self.limits.encoder_batch,
        )
        self.log = InvocationLog(self.settings)
        self.runtime.start()
        app.state.loopml = self

    def __is_ready__(self) -> bool:
        return self.runtime.ready

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.runtime.stop()
        self.log.close()

    def resolve(self, name: str) -> FunctionServing:
        """What serves ``name``, or the HTTP error that says why nothing does (404 / 503)."""
        try:
            return self.runtime.resolve(name)
        except UnknownFunctionError as error:
            raise HTTPException(404, str(error)) from None
        except (NotDeployedError, RuntimeNotReadyError) as error:
            raise HTTPException(503, str(error), headers={"Retry-After": "5"}) from None

    async def invoke_request(self, raw: bytes) -> InvokeRequest:
        """The JSON invoke body decoded and validated at a bounded cost (:mod:`serving.request_body`), off the
        event loop: a batch over LOOPML_MAX_BATCH is refused (413) from its length, before any item is validated,
        and a body with more JSON values than a largest valid request is refused before it is decoded."""
        try:
            data = await read_json(raw, self.limits.max_batch + 8, "values (one per input)")
        except BodyError as error:
            raise HTTPException(error.status, str(error)) from None
        if isinstance(data, dict):
            for key in ("texts", "images"):
                value = data.get(key)
                if isinstance(value, list):
                    self.check_count(Inputs("text" if key == "texts" else "image", value, single=False))
        try:
            if len(raw) <= INLINE_BYTES:  # one short text: validating it costs less than a hop to a thread
                return InvokeRequest.model_validate(data)
            return await asyncio.to_thread(InvokeRequest.model_validate, data)
        except ValidationError as error:
            raise RequestValidationError(error.errors(include_input=False, include_url=False)) from None

    def checked_texts(self, inputs: Inputs) -> list[str]:
        """The request's texts; 413 for a batch over LOOPML_MAX_BATCH or a text over LOOPML_MAX_TEXT_BYTES."""
        texts = inputs.values
        self.check_count(inputs)
        for i, text in enumerate(texts):
            size = len(text.encode("utf-8"))
            if size > self.limits.max_text_bytes:
                raise HTTPException(
                    413,
                    f"{inputs.field(i)} is {size:,} bytes; the limit is {self.limits.max_text_bytes:,} bytes "
                    "(LOOPML_MAX_TEXT_BYTES): shorten the text",
                )
        return texts

    def check_count(self, inputs: Inputs) -> None:
        if len(inputs.values) > self.limits.max_batch:
            raise HTTPException(
                413,
                f"the batch has {len(inputs.values)} {inputs.kind}s; the limit is {self.limits.max_batch} "
                "(LOOPML_MAX_BATCH): split it into smaller requests",
            )

    def decoded_images(self, inputs: Inputs) -> tuple[list[Any], list[str]]:
        """Every image decoded (RGB, upright) and its thumbnail for the log, or the 4xx that says which one is not
        usable and why: 413 over LOOPML_MAX_IMAGE_BYTES / LOOPML_MAX_IMAGE_PIXELS, 422 when it is not an image
        LoopML reads."""
        self.check_count(inputs)
        pictures = []
        for i, value in enumerate(inputs.values):
            try:
                pictures.append(decode_image(value, self.limits.image))
            except ImageTooLarge as error:
                raise HTTPException(413, f"{inputs.field(i)}: {error}") from None
            except ImageError as error:
                raise HTTPException(422, f"{inputs.field(i)}: {error}") from None
        return pictures, [thumbnail_uri(p) for p in pictures]

    async def answer(self, name: str, inputs: Inputs, key_id: str | None) -> list[InvokeResult]:
        """Check, route, score, log (durably) and answer every input of ``inputs``."""
        started = time.perf_counter()
        serving = self.resolve(name)
        expected = encoder_input_type(serving.encoder_id)
        if inputs.kind != expected:
            send = "'image' or 'images' (or upload a file)" if expected == "image" else "'text' or 'texts'"
            raise HTTPException(422, f"function {name!r} classifies {expected}s, not {inputs.kind}s: send {send}")
        if expected == "image":  # decoding and thumbnails are CPU work: off the event loop, in one trip
            items, logged = await asyncio.to_thread(self.decoded_images, inputs)
        elif sum(len(text) for text in inputs.values) > 65536:  # measuring many bytes: off the event loop
            items = logged = await asyncio.to_thread(self.checked_texts, inputs)
        else:
            items = logged = self.checked_texts(inputs)
        try:
            scored = await asyncio.wrap_future(self.runtime.submit(serving, items, inputs.sticky_key))
        except (NotDeployedError, RuntimeNotReadyError) as error:
            raise HTTPException(503, str(error), headers={"Retry-After": "5"}) from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        records = [
            InvocationRecord(
                function=name,
                input_text=text,  # an image's thumbnail (a data URI of a few kB), not the upload
                embedding=embedding_to_bytes(item.embedding) if item.embedding is not None else None,
                scores=item.version_scores,
                labels=item.version_labels,
                answered_by=item.answered_by,
                label=item.label,
                confidence=item.confidence,
                latency_ms=latency_ms,
                key_id=key_id,
                sticky_key=inputs.sticky_key,
            )
            for text, item in zip(logged, scored, strict=True)
        ]
        try:
            ids = await self.log.alog_many(records)
        except InvocationLogError as error:
            raise HTTPException(
                503,
                f"the answer was not returned because it could not be logged: {error}",
                headers={"Retry-After": "1"},
            ) from None
        return [_result(name, i, item) for i, item in zip(ids, scored, strict=True)]


if access_log_mode() == "errors":
    LoopML.add_asgi_middleware(FailedRequestLogMiddleware)  # added first: outermost, so it sees the 401s too
LoopML.add_asgi_middleware(ApiKeyMiddleware)
LoopML.add_asgi_middleware(JsonErrorMiddleware)


async def current_service(request: Request) -> LoopML:
    """The running service instance (set when BentoML creates it)."""
    service = getattr(request.app.state, "loopml", None)
    if service is None:
        raise HTTPException(503, "the service is starting; retry shortly", headers={"Retry-After": "1"})
    return service  # type: ignore[no-any-return]


Service = Annotated[LoopML, Depends(current_service)]


def _key_id(request: Request) -> str | None:
    return getattr(request.state, "key_id", None)


def _grant(request: Request) -> KeyGrant:
    grant = getattr(request.state, "grant", None)
    if grant is None:  # the middleware sets it on every route but the probes
        raise HTTPException(401, "missing API key")
    return grant  # type: ignore[no-any-return]


def _require(request: Request, right: str, function: str | None = None) -> KeyGrant:
    """The caller's grant, or 403 when it lacks ``right`` on ``function``."""
    grant = _grant(request)
    if not grant.allows(right, function):
        target = f" {function!r}" if function else ""
        verb = {"invoke": "invoke", "feedback": "send feedback on", "hooks": "signal changes of"}.get(right, right)
        raise HTTPException(403, f"this API key may not {verb}{target} (it has: {grant.describe()})")
    return grant


# --- endpoints ----------------------------------------------------------------------------------
def _is_multipart(scope: Scope) -> bool:
    for key, value in scope.get("headers", ()):
        if key == b"content-type":
            return value.lower().startswith(b"multipart/form-data")
    return False


class _UploadRoute(APIRoute):
    """The invoke route for ``multipart/form-data`` bodies only (image files); it comes first, and every other
    request to the same path goes on to the JSON route, which documents both bodies."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match != Match.NONE and not _is_multipart(scope):
            return Match.NONE, {}
        return match, child


UPLOAD_FIELDS = ("image", "images")


async def invoke_upload(service: Service, request: Request, name: FunctionName) -> Any:
    """Image files uploaded as ``multipart/form-data``: one file field ``image`` (one result) or one or more
    ``images`` (a list), and an optional ``sticky_key`` field."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException

    _require(request, "invoke", name)
    try:
        form = await request.form(max_files=service.limits.max_batch + 1, max_fields=8)
    except MultiPartException as error:
        raise HTTPException(422, f"unreadable multipart body: {error}") from None
    try:
        unknown = sorted({key for key in form if key not in (*UPLOAD_FIELDS, "sticky_key")})
        if unknown:
            raise HTTPException(422, f"unknown form fields {unknown}: send image files as 'image' or 'images'")
        files = [(key, value) for key, value in form.multi_items() if key in UPLOAD_FIELDS]
        if not files or any(not isinstance(value, UploadFile) for _, value in files):
            raise HTTPException(422, "send the image as a file field named 'image' (or several named 'images')")
        if {key for key, _ in files} == {"image"} and len(files) > 1:
            raise HTTPException(422, "one file per 'image' field: send several as 'images'")
        sticky = form.get("sticky_key")
        if sticky is not None and (not isinstance(sticky, str) or not 1 <= len(sticky) <= 128):
            raise HTTPException(422, "sticky_key: 1-128 characters")
        uploads = [value for _, value in files]
        data = [await upload.read() for upload in uploads]  # type: ignore[union-attr]
        inputs = Inputs(
            "image",
            data,
            single=files[0][0] == "image",
            sticky_key=sticky,  # type: ignore[arg-type]
            uploads=[upload.filename or f"#{i}" for i, upload in enumerate(uploads)],  # type: ignore[union-attr]
        )
    finally:
        await form.close()
    results = await service.answer(name, inputs, _key_id(request))
    if inputs.single:
        return results[0]
    return BatchInvokeResponse(function=name, results=results)


app.router.add_api_route(
    "/v1/functions/{name}/invoke",
    invoke_upload,
    methods=["POST"],
    response_model=InvokeResult | BatchInvokeResponse,
    dependencies=AUTH,
    include_in_schema=False,
    route_class_override=_UploadRoute,
)
UPLOAD_SCHEMA = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "image": {"type": "string", "format": "binary", "description": "One image file: one result."},
                "images": {
                    "type": "array",
                    "items": {"type": "string", "format": "binary"},
                    "description": "Several image files: a list of results, in order.",
                },
                "sticky_key": {"type": "string", "maxLength": 128},
            },
        }
    }
}


@app.post(
    "/v1/functions/{name}/invoke",
    tags=["invoke"],
    summary="Classify one input or a batch: texts, or images (JSON or a file upload)",
    response_model=InvokeResult | BatchInvokeResponse,
    responses=_responses(401, 403, 404, 413, 422, 503),
    dependencies=AUTH,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/InvokeRequest"},
                    "examples": INVOKE_EXAMPLES,
                },
                **UPLOAD_SCHEMA,
            },
        }
    },
)
async def invoke(service: Service, request: Request, name: FunctionName) -> Any:
    """Answer with the label, its calibrated confidence, every label's score, the version that answered
    and an invocation id per input. `{"text": ...}` gets one result, `{"texts": [...]}` a list in order; an image
    function takes `{"image": ...}` / `{"images": [...]}` (base64 or data URIs) or a `multipart/form-data` upload
    (file field `image`, or `images` for several). Exactly one of `text`, `texts`, `image`, `images`. A text sent
    to an image function, or the reverse, is a 422. During a canary each text is answered by the canary with the
    canary's weight (sticky per `sticky_key`); the canary scores every text in shadow either way. The answer is
    returned only after the invocation is durably logged."""
    _require(request, "invoke", name)
    body = await service.invoke_request(await request.body())
    inputs = body.inputs()
    results = await service.answer(name, inputs, _key_id(request))
    if inputs.single:
        return results[0]
    return BatchInvokeResponse(function=name, results=results)


@app.post(
    "/v1/invocations/{invocation_id}/feedback",
    tags=["feedback"],
    summary="Flag an answer and/or give the true label",
    status_code=201,
    response_model=FeedbackResponse,
    responses=_responses(401, 403, 404, 422),
    dependencies=AUTH,
)
async def feedback(
    service: Service,
    request: Request,
    invocation_id: Annotated[str, Path(max_length=36, description="From the invoke answer.")],
    body: Annotated[FeedbackRequest, Body(openapi_examples=FEEDBACK_EXAMPLES)],
) -> FeedbackResponse:
    """Record that an answer was wrong (`flagged`) and/or what the right label is (`true_label`, one of
    the answering version's labels). Flagged answers are sent to human review. The key needs the feedback right
    on the invocation's function."""
    grant = _require(request, "feedback")
    try:
        result = await asyncio.to_thread(
            service.log.record_feedback,
            invocation_id,
            flagged=body.flagged,
            true_label=body.true_label,
            comment=body.comment,
            key_id=_key_id(request),
            allowed_on=lambda function: grant.allows("feedback", function),
        )
    except InvocationNotFound as error:
        raise HTTPException(404, str(error)) from None
    except FeedbackForbidden as error:
        raise HTTPException(403, str(error)) from None
    except FeedbackError as error:
        raise HTTPException(422, str(error)) from None
    return FeedbackResponse(
        feedback_id=result.id,
        invocation_id=result.invocation_id,
        function=result.function,
        flagged=result.flagged,
        true_label=result.true_label,
        answered_by=result.answered_by,
        answered_label=result.answered_label,
    )


@app.post(
    "/v1/hooks/labelstudio/{name}",
    tags=["hooks"],
    summary="Label Studio's webhook: an annotation of the function changed",
    status_code=202,
    response_model=HookResponse,
    responses=_responses(401, 403, 422),
    dependencies=AUTH,
)
async def labelstudio_hook(service: Service, request: Request, name: FunctionName) -> HookResponse:
    """Label Studio calls this on every annotation created, updated or deleted in the function's project (the
    hook is registered by `loopml functions create` and `loopml up`); the annotation sensor then asks Label
    Studio about that function on its next tick (every second) instead of at its next poll. Label Studio's event
    body is not read. Without the hook, changes are found by polling (`LOOPML_ANNOTATION_POLL_SECONDS`)."""
    _require(request, "hooks", name)
    if not NAME_PATTERN.match(name):
        raise HTTPException(422, f"{name!r} is not a function name (lower-case letters, digits and hyphens)")
    await asyncio.to_thread(mark_annotations_changed, service.settings.run_dir, name)
    return HookResponse(function=name, accepted=True)


@app.get(
    "/v1/functions",
    tags=["functions"],
    summary="Every function with its serving versions and weights",
    response_model=FunctionsResponse,
    responses=_responses(401),
    dependencies=AUTH,
)
async def list_functions(service: Service, request: Request) -> FunctionsResponse:
    """The functions in the key's scope."""
    grant = _grant(request)
    snapshot = service.runtime.snapshot
    return FunctionsResponse(
        revision=snapshot.revision,
        functions=[_serving_info(snapshot.functions[name]) for name in sorted(snapshot.functions) if grant.sees(name)],
    )


@app.get(
    "/v1/functions/{name}",
    tags=["functions"],
    summary="One function's serving versions and weights",
    response_model=FunctionInfo,
    responses=_responses(401, 403, 404, 422),
    dependencies=AUTH,
)
async def get_function(service: Service, request: Request, name: FunctionName) -> FunctionInfo:
    grant = _grant(request)
    if not grant.sees(name):
        raise HTTPException(403, f"{name!r} is outside this API key's scope (it has: {grant.describe()})")
    snapshot = service.runtime.snapshot
    serving = snapshot.functions.get(name)
    if serving is None:
        known = ", ".join(n for n in snapshot.known if grant.sees(n)) or "none yet"
        raise HTTPException(404, f"unknown function {name!r} (known functions: {known})")
    return _serving_info(serving)


REPORT_HEADERS = {
    # the report's own scripts run, but in an opaque origin: they cannot call the API as the page's origin
    "Content-Security-Policy": "sandbox allow-scripts allow-popups",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a signed link must not leak to sites the report links to
    "Cache-Control": "private, max-age=60",
}


def _report_reader(request: Request, name: str) -> None:
    """A signed link opens its own function's reports; otherwise the key must see the function."""
    if getattr(request.state, "report_link", None) == name:
        return
    grant = _grant(request)
    if not grant.sees(name):
        raise HTTPException(403, f"{name!r} is outside this API key's scope (it has: {grant.describe()})")


@app.get(
    "/v1/functions/{name}/reports",
    tags=["reports"],
    summary="A function's HTML reports (drift), newest first",
    response_model=ReportsResponse,
    responses=_responses(401, 403),
    dependencies=AUTH,
)
async def list_function_reports(service: Service, request: Request, name: FunctionName) -> ReportsResponse:
    """The drift reports of the function (the monitoring job writes them: hourly, or launched from Dagster), newest
    first, with the route of each; ``latest.html`` is the newest."""
    from loopml.report_links import list_reports, report_route

    _report_reader(request, name)
    names = await asyncio.to_thread(list_reports, service.settings, name)
    return ReportsResponse(function=name, reports=[ReportInfo(name=n, path=report_route(name, n)) for n in names])


@app.get(
    "/v1/functions/{name}/reports/{report}",
    tags=["reports"],
    summary="One HTML report of a function (a key that sees the function, or a signed link)",
    response_class=HTMLResponse,
    responses=_responses(401, 403, 404),
    dependencies=AUTH,
)
async def get_function_report(service: Service, request: Request, name: FunctionName, report: str) -> FileResponse:
    """The report file ``report`` (``latest.html``: the newest). Dagster's monitoring asset links it with a signed
    URL (``?expires=...&signature=...``), which opens without a key until it expires."""
    from loopml.report_links import report_path

    _report_reader(request, name)
    path = await asyncio.to_thread(report_path, service.settings, name, report)
    if path is None:
        raise HTTPException(404, f"no report {report!r} of {name!r}: GET /v1/functions/{name}/reports lists them")
    return FileResponse(path, media_type="text/html", headers=REPORT_HEADERS)


@app.get(
    "/v1/health",
    tags=["health"],
    summary="Liveness and readiness (no API key)",
    response_model=HealthResponse,
)
async def health(service: Service) -> HealthResponse:
    runtime = service.runtime
    snapshot = runtime.snapshot
    ready = runtime.ready
    return HealthResponse(
        status="ok" if ready else "loading",
        ready=ready,
        revision=snapshot.revision,
        functions=len(snapshot.functions),
        device=runtime.device if ready else "unknown",
        invocation_backlog=service.log.backlog,
        scoring_batches=runtime.batches,
        mean_batch_size=round(runtime.batched_items / max(1, runtime.batches), 2),
    )
