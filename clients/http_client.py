"""HTTP clients for ddrnet-serve: :class:`HttpClient` (blocking) and :class:`AsyncHttpClient` (asyncio),
both on httpx with keep-alive connection pools.

``classify(image)`` sends one image as the raw body (``Content-Type`` from its magic number) to
``POST /v1/models/{model}[/versions/{v}]/classify``; ``classify_many(images)`` sends multipart
requests of up to ``batch_size`` images each; ``infer_images(images)`` uses the Open Inference
Protocol v2 ``infer`` route with the ``images`` BYTES input and returns the logits. Errors are the
exceptions of :mod:`clients.errors`; 503 and unreachable servers are retried (:mod:`clients.retry`).

Deadlines: ``timeout`` (seconds; per client, overridable per call) bounds the whole call, retries
included. Each attempt tells the server the time left (``X-Request-Timeout-Ms``), so a request that
cannot be served in time is dropped from the server's queue (504) instead of using the model for
nothing; the connection itself waits :data:`ANSWER_GRACE_S` longer so that the server's 504 arrives.

TLS: an ``https://`` server address; ``ca_cert`` (PEM bundle to trust), ``client_cert`` /
``client_key`` (mutual TLS), ``insecure=True`` to skip verification (tests only).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from clients import oip
from clients.classify_methods import AsyncClassifyMethods, SyncClassifyMethods
from clients.errors import (
    ClientError,
    DeadlineExceededError,
    ServerInternalError,
    UnavailableError,
    from_http,
)
from clients.payload import ImageLike, content_type, to_bytes
from clients.retry import RetryPolicy, acall_with_retry, call_with_retry
from clients.types import ClassifyResult, Logits, result_from_json

TIMEOUT_HEADER = "X-Request-Timeout-Ms"
ANSWER_GRACE_S = 0.5
DEFAULT_TIMEOUT_S = 30.0


def base_url(server: str, tls: bool = False) -> str:
    """``http://host:port`` from ``host:port`` (``https`` with ``tls``) or a full URL, no trailing slash."""
    server = server.strip().rstrip("/")
    if not server:
        raise ValueError("server address is empty (expected HOST:PORT or http(s)://HOST:PORT)")
    if "://" not in server:
        server = f"{'https' if tls else 'http'}://{server}"
    if not server.startswith(("http://", "https://")):
        raise ValueError(f"server address {server!r} must be HOST:PORT or an http(s):// URL")
    return server


def ssl_context(
    ca_cert: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
    insecure: bool = False,
) -> ssl.SSLContext | bool:
    """The httpx ``verify`` value for these TLS options."""
    if insecure:
        return False
    if ca_cert is None and client_cert is None:
        return True
    context = ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
    if client_cert is not None:
        context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    return context


class _HttpBase:
    """Request building and answer parsing shared by the two clients."""

    def __init__(
        self,
        server: str = "127.0.0.1:8000",
        *,
        model: str | None = None,
        version: str | int | None = None,
        label: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        ca_cert: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        insecure: bool = False,
        max_connections: int = 100,
    ) -> None:
        tls = ca_cert is not None or client_cert is not None or insecure
        self.base_url = base_url(server, tls=tls)
        self.model = model
        self.version = None if version is None else str(version)
        self.label = label or None  # a version label: classify goes to /v1/models/{m}/labels/{label}/classify
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._verify = ssl_context(ca_cert, client_cert, client_key, insecure)
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )

    # -- request pieces -------------------------------------------------------------------------------

    def _route(self, model: str | None, version: str | int | None, action: str, prefix: str = "v1") -> str:
        name = model or self.model
        if not name:
            raise ValueError("no model name: pass model= to the client or to the call")
        chosen = self.version if version is None else str(version)
        path = f"/{prefix}/models/{quote(name, safe='')}"
        if chosen:
            path += f"/versions/{quote(chosen, safe='')}"
        elif self.label and action == "classify":
            path += f"/labels/{quote(self.label, safe='')}"
        return f"{path}/{action}"

    @staticmethod
    def _attempt_timing(deadline: float | None) -> tuple[dict[str, str], float | None]:
        """(headers, httpx timeout) for one attempt; DeadlineExceededError when no time is left."""
        if deadline is None:
            return {}, None
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("deadline passed before the request could be sent")
        return {TIMEOUT_HEADER: f"{left * 1000.0:.1f}"}, left + ANSWER_GRACE_S

    @staticmethod
    def _classify_body(images: Sequence[bytes], top_k: int | None) -> dict[str, Any]:
        params = {"top_k": str(top_k)} if top_k is not None else {}
        if len(images) == 1:
            data = images[0]
            return {"content": data, "headers": {"Content-Type": content_type(data)}, "params": params}
        files = [("files", (f"image{i}", data, content_type(data))) for i, data in enumerate(images)]
        return {"files": files, "params": params}

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise from_http(response.status_code, response.content, response.headers)
        return response

    @staticmethod
    def _classify_result(response: httpx.Response, count: int) -> ClassifyResult:
        try:
            result = result_from_json(response.json())
        except (ValueError, KeyError, TypeError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise ServerInternalError(f"cannot read the classify answer: {why}") from None
        if len(result) != count:
            raise ServerInternalError(f"sent {count} images, the answer has {len(result)} results")
        return result

    @staticmethod
    def _transport_error(exc: httpx.HTTPError, url: str) -> ClientError:
        if isinstance(exc, httpx.TimeoutException):
            return DeadlineExceededError(f"no answer from {url} in time ({type(exc).__name__})")
        return UnavailableError(f"cannot reach {url}: {type(exc).__name__}: {exc}")


class HttpClient(_HttpBase, SyncClassifyMethods):
    """Blocking HTTP client; thread-safe (httpx.Client is). Use as a context manager or ``close()``."""

    def __init__(self, server: str = "127.0.0.1:8000", **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, verify=self._verify, limits=self._limits
        )

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, deadline: float | None, **kwargs: Any) -> httpx.Response:
        def attempt() -> httpx.Response:
            timing, limit = self._attempt_timing(deadline)
            headers = {**kwargs.get("headers", {}), **timing}
            rest = {k: v for k, v in kwargs.items() if k != "headers"}
            try:
                response = self._http.request(method, path, headers=headers, timeout=limit, **rest)
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, self.base_url + path) from None
            return self._check(response)

        return call_with_retry(self.retry, deadline, attempt)

    def _classify_call(
        self,
        images: Sequence[bytes],
        top_k: int | None,
        model: str | None,
        version: Any,
        deadline: float | None,
    ) -> ClassifyResult:
        path = self._route(model, version, "classify")
        response = self._send("POST", path, deadline, **self._classify_body(images, top_k))
        return self._classify_result(response, len(images))

    def infer_images(
        self, images: Sequence[ImageLike], *, model: str | None = None, version: str | int | None = None,
        timeout: float | None = None,
    ) -> Logits:
        """The model's logits for ``images`` (one OIP v2 infer request)."""
        data = [to_bytes(image) for image in images]
        body, headers = oip.http_request(data)
        path = self._route(model, version, "infer", prefix="v2")
        response = self._send("POST", path, self._deadline(timeout), content=body, headers=headers)
        return oip.parse_http_response(response.content, response.headers)

    # -- health, metadata, metrics -------------------------------------------------------------------

    def _get(self, path: str, timeout: float | None) -> httpx.Response:
        try:
            return self._http.get(path, timeout=timeout if timeout is not None else self.timeout)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, self.base_url + path) from None

    def ready(self, timeout: float | None = 5.0) -> bool:
        """Whether the server is ready (``GET /v2/health/ready``); UnavailableError when unreachable."""
        return self._get("/v2/health/ready", timeout).status_code == 200

    def models(self, timeout: float | None = 5.0) -> list[dict[str, Any]]:
        """The served models (``GET /v1/models``): ``[{"name", "version", "ready"}, ...]``."""
        return self._check(self._get("/v1/models", timeout)).json()["models"]

    def model_metadata(self, model: str | None = None, timeout: float | None = 5.0) -> dict[str, Any]:
        """OIP v2 model metadata (``name``, ``versions``, ``platform``, ``inputs``, ``outputs``)."""
        path = self._route(model, None, "", prefix="v2").rstrip("/")
        return self._check(self._get(path, timeout)).json()

    def metrics_text(self, timeout: float | None = 5.0) -> str:
        """The Prometheus text of ``GET /metrics``."""
        return self._check(self._get("/metrics", timeout)).text


class AsyncHttpClient(_HttpBase, AsyncClassifyMethods):
    """asyncio HTTP client (one ``httpx.AsyncClient``); ``async with`` it or ``await aclose()``.
    ``classify_many`` sends its requests concurrently (up to ``concurrency`` at a time)."""

    def __init__(self, server: str = "127.0.0.1:8000", **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, verify=self._verify, limits=self._limits
        )

    async def __aenter__(self) -> AsyncHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, deadline: float | None, **kwargs: Any) -> httpx.Response:
        async def attempt() -> httpx.Response:
            timing, limit = self._attempt_timing(deadline)
            headers = {**kwargs.get("headers", {}), **timing}
            rest = {k: v for k, v in kwargs.items() if k != "headers"}
            try:
                response = await self._http.request(method, path, headers=headers, timeout=limit, **rest)
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, self.base_url + path) from None
            return self._check(response)

        return await acall_with_retry(self.retry, deadline, attempt)

    async def _classify_call(
        self,
        images: Sequence[bytes],
        top_k: int | None,
        model: str | None,
        version: Any,
        deadline: float | None,
    ) -> ClassifyResult:
        path = self._route(model, version, "classify")
        response = await self._send("POST", path, deadline, **self._classify_body(images, top_k))
        return self._classify_result(response, len(images))

    async def infer_images(
        self, images: Sequence[ImageLike], *, model: str | None = None, version: str | int | None = None,
        timeout: float | None = None,
    ) -> Logits:
        """The model's logits for ``images`` (one OIP v2 infer request)."""
        data = [to_bytes(image) for image in images]
        body, headers = oip.http_request(data)
        path = self._route(model, version, "infer", prefix="v2")
        response = await self._send("POST", path, self._deadline(timeout), content=body, headers=headers)
        return oip.parse_http_response(response.content, response.headers)

    async def _get(self, path: str, timeout: float | None) -> httpx.Response:
        try:
            return await self._http.get(path, timeout=timeout if timeout is not None else self.timeout)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, self.base_url + path) from None

    async def ready(self, timeout: float | None = 5.0) -> bool:
        return (await self._get("/v2/health/ready", timeout)).status_code == 200

    async def models(self, timeout: float | None = 5.0) -> list[dict[str, Any]]:
        return self._check(await self._get("/v1/models", timeout)).json()["models"]

    async def model_metadata(self, model: str | None = None, timeout: float | None = 5.0) -> dict[str, Any]:
        path = self._route(model, None, "", prefix="v2").rstrip("/")
        return self._check(await self._get(path, timeout)).json()

    async def metrics_text(self, timeout: float | None = 5.0) -> str:
        return self._check(await self._get("/metrics", timeout)).text
