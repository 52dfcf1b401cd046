"""A Python client for LoopML's serving API: invoke functions, send feedback, list what serves.

    from loopml.client import Client

    with Client() as loopml:  # LOOPML_SERVING_URL or 127.0.0.1:LOOPML_SERVING_PORT; key from LOOPML_API_KEY
        answer = loopml.invoke("review-sentiment", "A warm, funny film.")
        print(answer.label, answer.confidence, answer.version)
        loopml.feedback(answer.invocation_id, label="negative")

``AsyncClient`` has the same methods as coroutines. Answers come back as frozen dataclasses (:class:`Prediction`,
:class:`Feedback`, :class:`FunctionInfo`), each with the service's JSON in ``raw``; a failed call raises a
:class:`LoopMLError` whose message is the service's ``detail``, never a raw ``httpx`` exception.

Retries (``tenacity``): a call answered 429, 502, 503 or 504, or that could not connect, is sent again after an
exponential backoff with jitter (or the answer's ``Retry-After``, up to ``max_wait``), at most ``retries`` more
times. Other 4xx answers are final. Feedback adds a row per call, so it is not resent where the service may have
recorded it (a 504, or a connection lost after the request went out); an invoke is (at worst the call is logged
twice).
"""

from __future__ import annotations

import base64
import io
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias
from urllib.parse import quote

import httpx
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from loopml import __version__

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    ImageInput: TypeAlias = bytes | str | os.PathLike[str] | PILImage
else:
    ImageInput: TypeAlias = Any

API_KEY_ENV = "LOOPML_API_KEY"
URL_ENV = "LOOPML_SERVING_URL"
DEMO_KEY_FILE = "demo-client.key"  # written by `loopml demo` into LOOPML_HOME/secrets (loopml.demo)
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# answers after which a non-idempotent call (feedback) may have taken effect: not resent
_MAYBE_DONE_STATUSES = frozenset({504})
# transport failures before the request was sent: safe to resend anything
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# the connection dropped after the request went out (a stale keep-alive connection, a restarting server)
_DROPPED = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


# --- errors --------------------------------------------------------------------------------------
class LoopMLError(Exception):
    """A call to the serving API failed. ``status`` is the HTTP status (``None``: no answer), ``detail`` the
    service's explanation, ``code`` its short error code (``not_found``, ``invalid_request``, ...)."""

    def __init__(self, status: int | None, detail: str, *, code: str | None = None, body: Any = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.body = body

    def __str__(self) -> str:
        return self.detail if self.status is None else f"HTTP {self.status}: {self.detail}"


class AuthenticationError(LoopMLError):
    """401: no API key, or an invalid or revoked one."""


class PermissionDeniedError(LoopMLError):
    """403: the key lacks the right, or the function is outside its scope."""


class NotFoundError(LoopMLError):
    """404: unknown function or invocation."""


class RequestTooLargeError(LoopMLError):
    """413: a text, image, batch or body over the service's limits."""


class InvalidRequestError(LoopMLError):
    """422: the service names the invalid fields (``errors``: one entry per field, as the service sent them)."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        errors = self.body.get("errors") if isinstance(self.body, dict) else None
        return list(errors or [])


class RateLimitedError(LoopMLError):
    """429, still after the retries."""


class ServiceUnavailableError(LoopMLError):
    """5xx, still after the retries (no deployed version yet, the service starting, a proxy in trouble)."""


class ConnectionFailedError(LoopMLError):
    """No answer: the serving API could not be reached, or the connection dropped (``status`` is ``None``)."""


class RequestTimeoutError(ConnectionFailedError):
    """No answer within the client's ``timeout``."""


_ERRORS: dict[int, type[LoopMLError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: RequestTooLargeError,
    422: InvalidRequestError,
    429: RateLimitedError,
}


def error_from_response(response: httpx.Response) -> LoopMLError:
    """The :class:`LoopMLError` for an error answer, its message taken from the service's ``detail``."""
    status = response.status_code
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        pass
    if isinstance(body, dict) and body.get("detail") is not None:
        detail = body["detail"] if isinstance(body["detail"], str) else str(body["detail"])
        code = body.get("error") if isinstance(body.get("error"), str) else None
    else:  # not the service's JSON: a proxy's page, an empty body
        text = " ".join(response.text.split())[:200]
        detail = text or response.reason_phrase or "no detail"
        code = None
    kind = _ERRORS.get(status, ServiceUnavailableError if status >= 500 else LoopMLError)
    return kind(status, detail, code=code, body=body)


# --- answers -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """The answer to one input (``POST /v1/functions/{name}/invoke``)."""

    invocation_id: str  # for feedback on this answer
    function: str
    label: str
    confidence: float  # calibrated probability of ``label``
    scores: Mapping[str, float]  # calibrated probability of every label of the answering version
    version: str  # e.g. ``review-sentiment:v3``
    role: Literal["primary", "canary"]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Prediction:
        return cls(
            invocation_id=body["invocation_id"],
            function=body["function"],
            label=body["label"],
            confidence=float(body["confidence"]),
            scores={label: float(score) for label, score in body["scores"].items()},
            version=body["version"],
            role=body["role"],
            raw=body,
        )


@dataclass(frozen=True)
class Feedback:
    """The recorded feedback (``POST /v1/invocations/{id}/feedback``)."""

    feedback_id: int
    invocation_id: str
    function: str
    flagged: bool
    true_label: str | None
    answered_by: str  # the version whose answer the feedback is about
    answered_label: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Feedback:
        return cls(
            feedback_id=int(body["feedback_id"]),
            invocation_id=body["invocation_id"],
            function=body["function"],
            flagged=bool(body["flagged"]),
            true_label=body.get("true_label"),
            answered_by=body["answered_by"],
            answered_label=body["answered_label"],
            raw=body,
        )


@dataclass(frozen=True)
class VersionInfo:
    version: str
    weight: float  # share of the answers this version gives
    labels: tuple[str, ...]

    @classmethod
    def from_json(cls, body: dict[str, Any] | None) -> VersionInfo | None:
        if body is None:
            return None
        return cls(version=body["version"], weight=float(body["weight"]), labels=tuple(body["labels"]))


@dataclass(frozen=True)
class FunctionInfo:
    """A function and the versions that serve it (``GET /v1/functions``)."""

    name: str
    status: Literal["serving", "canary", "not_deployed", "error"]
    primary: VersionInfo | None
    canary: VersionInfo | None
    encoder_id: str
    revision: int
    error: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FunctionInfo:
        return cls(
            name=body["name"],
            status=body["status"],
            primary=VersionInfo.from_json(body.get("primary")),
            canary=VersionInfo.from_json(body.get("canary")),
            encoder_id=body["encoder_id"],
            revision=int(body["revision"]),
            error=body.get("error"),
            raw=body,
        )


# --- defaults and request bodies -----------------------------------------------------------------
def default_url() -> str:
    """``LOOPML_SERVING_URL``, else the local serving API (``LOOPML_SERVING_PORT``, 3100), as `loopml up` starts it."""
    from loopml.config import get_settings

    return os.environ.get(URL_ENV, "").strip() or get_settings().serving_url


def default_api_key() -> str | None:
    """``LOOPML_API_KEY``, else the key `loopml demo` made for its simulated product (LOOPML_HOME/secrets), if any."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if key:
        return key
    from loopml.config import get_settings

    path = get_settings().secrets_dir / DEMO_KEY_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def encode_image(image: ImageInput) -> str:
    """An image as the invoke route takes it: ``bytes`` (an image file's content), a path, a PIL image (sent as
    PNG) or a ``data:image/...;base64,`` URI (sent as it is), as base64 text."""
    if isinstance(image, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(image)).decode("ascii")
    if isinstance(image, str) and image.startswith("data:"):
        return image
    if isinstance(image, str | os.PathLike):
        return base64.b64encode(Path(image).read_bytes()).decode("ascii")
    if hasattr(image, "save") and type(image).__module__.startswith("PIL."):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    raise TypeError(f"an image is bytes, a path, a PIL image or a data: URI, not {type(image).__name__}")


def _invoke_body(text: str | None, image: ImageInput | None, sticky_key: str | None) -> dict[str, Any]:
    if (text is None) == (image is None):
        raise ValueError("give exactly one of text or image")
    body: dict[str, Any] = {"text": text} if text is not None else {"image": encode_image(image)}
    if sticky_key is not None:
        body["sticky_key"] = sticky_key
    return body


def _batch_body(
    texts: Sequence[str] | None, images: Sequence[ImageInput] | None, sticky_key: str | None
) -> dict[str, Any]:
    if (texts is None) == (images is None):
        raise ValueError("give exactly one of texts or images")
    if isinstance(texts, str | bytes) or isinstance(images, str | bytes):
        raise TypeError("texts and images are lists, not one text or image: use invoke() for one")
    body: dict[str, Any] = (
        {"texts": list(texts)} if texts is not None else {"images": [encode_image(i) for i in images or ()]}
    )
    if sticky_key is not None:
        body["sticky_key"] = sticky_key
    return body


def _feedback_body(label: str | None, flagged: bool, comment: str | None) -> dict[str, Any]:
    if label is None and not flagged:
        raise ValueError("give label= (the true label) and/or flagged=True; empty feedback says nothing")
    body: dict[str, Any] = {"flagged": flagged}
    if label is not None:
        body["true_label"] = label
    if comment:
        body["comment"] = comment
    return body


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now (it is seconds or an HTTP date); ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# --- the retry policy ----------------------------------------------------------------------------
class _RetryableAnswer(Exception):
    """An answer worth another try (429, 502, 503, 504); carries it to the retry policy."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    idempotent: bool = True  # sending it twice does no harm (not so feedback: a row per call)
    json: Any = None


def _retryable(call: _Call) -> Any:
    def check(error: BaseException) -> bool:
        if isinstance(error, _RetryableAnswer):
            return call.idempotent or error.response.status_code not in _MAYBE_DONE_STATUSES
        if isinstance(error, _NOT_SENT):
            return True
        return call.idempotent and isinstance(error, _DROPPED)

    return retry_if_exception(check)


class _Base:
    """What the sync and async clients share: configuration, request bodies, answers and errors."""

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        timeout: float,
        retries: int,
        backoff: float,
        max_wait: float,
        base_url: str,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.url = (url or base_url or default_url()).rstrip("/")
        self.api_key = api_key if api_key is not None else default_api_key()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait

    @property
    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"loopml-client/{__version__}", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next try: the answer's ``Retry-After``, else exponential with jitter."""
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, _RetryableAnswer):
            after = retry_after_seconds(error.response.headers.get("retry-after"))
            if after is not None:
                return min(after, self.max_wait)
        exponential = self.backoff * 2 ** (state.attempt_number - 1)
        return min(exponential + random.uniform(0, self.backoff), self.max_wait)

    def _policy(self, call: _Call) -> dict[str, Any]:
        return {
            "retry": _retryable(call),
            "stop": stop_after_attempt(self.retries + 1),
            "wait": self._wait,
            "reraise": True,
        }

    def _request(self, call: _Call) -> dict[str, Any]:
        return {
            "method": call.method,
            "url": f"{self.url}{call.path}",
            "json": call.json,
            "headers": self.headers,
        }

    @staticmethod
    def _checked(response: httpx.Response) -> httpx.Response:
        if response.status_code in RETRY_STATUSES:
            raise _RetryableAnswer(response)
        return response

    def _failure(self, error: BaseException) -> LoopMLError:
        if isinstance(error, _RetryableAnswer):
            return error_from_response(error.response)
        where = f"the serving API at {self.url}"
        if isinstance(error, httpx.TimeoutException):
            return RequestTimeoutError(None, f"{where} did not answer in time ({type(error).__name__}: {error})")
        hint = "is it running? (`loopml up`; or set LOOPML_SERVING_URL)"
        return ConnectionFailedError(None, f"could not reach {where}: {error or type(error).__name__}; {hint}")

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        if response.is_error:
            raise error_from_response(response)
        try:
            return response.json()
        except ValueError:
            raise LoopMLError(response.status_code, f"not a JSON answer: {response.text[:200]!r}") from None

    @staticmethod
    def _invoke_call(function: str, body: dict[str, Any]) -> _Call:
        return _Call("POST", f"/v1/functions/{quote(function, safe='')}/invoke", json=body)

    @staticmethod
    def _feedback_call(invocation_id: str, body: dict[str, Any]) -> _Call:
        path = f"/v1/invocations/{quote(invocation_id, safe='')}/feedback"
        return _Call("POST", path, idempotent=False, json=body)

    @staticmethod
    def _batch(body: Any) -> list[Prediction]:
        return [Prediction.from_json(result) for result in body["results"]]


class Client(_Base):
    """A synchronous client of the serving API.

    ``url``: the serving API (default :func:`default_url`); ``api_key``: the bearer key (default
    :func:`default_api_key`; ``""`` sends none); ``timeout``: seconds per try; ``retries``: tries after the first
    on 429, 502, 503, 504 and connection errors, ``backoff`` seconds before the first (doubling, with jitter, at
    most ``max_wait``); ``http``: the ``httpx.Client`` to send with (a Starlette ``TestClient`` in tests), with its
    own timeouts, which the client does not close.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff, max_wait, str(http.base_url) if http else "")
        self._owned = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def _send(self, call: _Call) -> Any:
        try:
            for attempt in Retrying(**self._policy(call)):
                with attempt:
                    return self._json(self._checked(self._http.request(**self._request(call))))
        except (_RetryableAnswer, httpx.HTTPError, httpx.InvalidURL) as error:
            raise self._failure(error) from None
        raise AssertionError("unreachable")  # pragma: no cover - Retrying returns or raises

    def invoke(
        self, function: str, text: str | None = None, *, image: ImageInput | None = None, sticky_key: str | None = None
    ) -> Prediction:
        """Classify one text (or one ``image``: bytes, a path, a PIL image or a data URI) with ``function``."""
        return Prediction.from_json(self._send(self._invoke_call(function, _invoke_body(text, image, sticky_key))))

    def invoke_batch(
        self,
        function: str,
        texts: Sequence[str] | None = None,
        *,
        images: Sequence[ImageInput] | None = None,
        sticky_key: str | None = None,
    ) -> list[Prediction]:
        """Classify a batch of texts (or ``images``) in one request; the answers in input order."""
        return self._batch(self._send(self._invoke_call(function, _batch_body(texts, images, sticky_key))))

    def feedback(
        self, invocation_id: str, *, label: str | None = None, flagged: bool = False, comment: str | None = None
    ) -> Feedback:
        """Give the true ``label`` of an answer and/or flag it as wrong (at least one of them)."""
        body = _feedback_body(label, flagged, comment)
        return Feedback.from_json(self._send(self._feedback_call(invocation_id, body)))

    def functions(self) -> list[FunctionInfo]:
        """The functions the key may see, with the versions that serve them."""
        return [FunctionInfo.from_json(f) for f in self._send(_Call("GET", "/v1/functions"))["functions"]]

    def function(self, name: str) -> FunctionInfo:
        """One function and the versions that serve it."""
        return FunctionInfo.from_json(self._send(_Call("GET", f"/v1/functions/{quote(name, safe='')}")))

    def health(self) -> dict[str, Any]:
        """The service's health (``GET /v1/health``, no key needed): ``ready``, ``revision``, ``functions``, ..."""
        return dict(self._send(_Call("GET", "/v1/health")))


class AsyncClient(_Base):
    """:class:`Client`'s methods as coroutines, on an ``httpx.AsyncClient`` (``http``: one of yours)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff, max_wait, str(http.base_url) if http else "")
        self._owned = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def _send(self, call: _Call) -> Any:
        try:
            async for attempt in AsyncRetrying(**self._policy(call)):
                with attempt:
                    return self._json(self._checked(await self._http.request(**self._request(call))))
        except (_RetryableAnswer, httpx.HTTPError, httpx.InvalidURL) as error:
            raise self._failure(error) from None
        raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying returns or raises

    async def invoke(
        self, function: str, text: str | None = None, *, image: ImageInput | None = None, sticky_key: str | None = None
    ) -> Prediction:
        body = _invoke_body(text, image, sticky_key)
        return Prediction.from_json(await self._send(self._invoke_call(function, body)))

    async def invoke_batch(
        self,
        function: str,
        texts: Sequence[str] | None = None,
        *,
        images: Sequence[ImageInput] | None = None,
        sticky_key: str | None = None,
    ) -> list[Prediction]:
        body = _batch_body(texts, images, sticky_key)
        return self._batch(await self._send(self._invoke_call(function, body)))

    async def feedback(
        self, invocation_id: str, *, label: str | None = None, flagged: bool = False, comment: str | None = None
    ) -> Feedback:
        body = _feedback_body(label, flagged, comment)
        return Feedback.from_json(await self._send(self._feedback_call(invocation_id, body)))

    async def functions(self) -> list[FunctionInfo]:
        return [FunctionInfo.from_json(f) for f in (await self._send(_Call("GET", "/v1/functions")))["functions"]]

    async def function(self, name: str) -> FunctionInfo:
        return FunctionInfo.from_json(await self._send(_Call("GET", f"/v1/functions/{quote(name, safe='')}")))

    async def health(self) -> dict[str, Any]:
        return dict(await self._send(_Call("GET", "/v1/health")))
