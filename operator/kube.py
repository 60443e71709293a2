"""The one module that talks to the Kubernetes API (besides kopf's own watching).

A small asyncio client over aiohttp, authenticated with the same credentials kopf
logs in with (``kopf.login_with_service_account`` or ``kopf.login_with_kubeconfig``).
Hand-written rather than the ``kubernetes`` package because that client is
synchronous (a thread per call) and deserialises every response into typed models;
the operator needs a handful of calls and plain dicts, fast, for a thousand models at once.

Writes retry on 5xx, 429 and connection errors with capped backoff; creates treat
409 AlreadyExists as success (names are deterministic); a status patch may carry a
``resourceVersion`` precondition and then surfaces a 409 as :class:`Conflict`.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from modelpress import api

log = logging.getLogger(__name__)

RETRIES = 6
# Projected service-account tokens rotate; the kubelet rewrites this file before expiry.
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
BACKOFF_S = 0.1
# The longest one call may take; also how long a session replaced by a new login stays open.
SESSION_TIMEOUT_S = 30.0
BACKOFF_MAX_S = 2.0
FIELD_MANAGER = "modelpress-operator"
# Writes ask the server to refuse unknown fields rather than drop them with a warning (its
# default), so a builder that drifts from the Kubernetes API fails loudly, with the field named.
# https://kubernetes.io/docs/reference/using-api/api-concepts/#field-validation
WRITE_PARAMS = {"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict"}

# apiVersion/kind -> plural (the only kinds the operator writes or reads directly).
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("batch/v1", "Job"): "jobs",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservices",
    (api.API_VERSION, api.KIND): api.PLURAL,
}


class ApiError(Exception):
    """The API server's answer to a call, when not a success; callers catch the subclass
    that means what they handle (:class:`NotFound`, :class:`Conflict`...), never the number."""

    def __init__(self, status: int, reason: str, message: str):
        self.status, self.reason, self.message = status, reason, message
        super().__init__(f"{status} {reason}: {message}")


class BadRequest(ApiError):
    """400: the server cannot decode the object (e.g. an unknown field under ``fieldValidation=Strict``)."""


class Forbidden(ApiError):
    """403: RBAC does not allow the call, or admission (a ResourceQuota) refused it for now."""


class NotFound(ApiError):
    """404: no such object (or no such resource type)."""


class Conflict(ApiError):
    """409: a precondition (resourceVersion) did not hold: someone wrote in between."""


class AlreadyExists(ApiError):
    """409 with reason AlreadyExists: a create met an object of that name."""


class Invalid(ApiError):
    """422: the object as written breaks the resource's schema or validation rules."""


# HTTP status -> the error raised for it; anything else is a plain ApiError.
_ERRORS: dict[int, type[ApiError]] = {400: BadRequest, 403: Forbidden, 404: NotFound, 409: Conflict, 422: Invalid}


def api_error(status: int, reason: str, message: str) -> ApiError:
    """The typed error for one failed call (409 splits on the reason, as Kubernetes' own clients do)."""
    cls = AlreadyExists if status == 409 and reason == "AlreadyExists" else _ERRORS.get(status, ApiError)
    return cls(status, reason, message)


def resource_path(
    api_version: str, plural: str, namespace: str | None, name: str | None = None, subresource: str | None = None
) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = prefix + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def _ssl_context(conn: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    """kopf's own TLS setup, so the operator trusts exactly what kopf's watches trust.

    It decodes kubeconfig's base64 ``certificate-authority-data`` and the embedded
    ``client-certificate-data`` / ``client-key-data`` as well as file paths.
    """
    if conn.insecure:
        return False
    return conn.as_ssl_context()


class Kube:
    """Typed-enough helpers for the few calls the operator makes."""

    token_path = SERVICE_ACCOUNT_TOKEN

    def __init__(self, conn: kopf.ConnectionInfo):
        self._session: aiohttp.ClientSession | None = None
        # Sessions replaced by a new login, each with the task that closes it after the grace.
        self._retired: dict[aiohttp.ClientSession, asyncio.Task[None]] = {}
        self._use(conn)

    def _use(self, conn: kopf.ConnectionInfo) -> None:
        self.base = conn.server.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "modelpress-operator"}
        if conn.token:
            headers["Authorization"] = f"{conn.scheme or 'Bearer'} {conn.token}"
        auth = aiohttp.BasicAuth(conn.username, conn.password or "") if conn.username else None
        self._session_args: dict[str, Any] = {"headers": headers, "auth": auth}
        self._ssl = _ssl_context(conn) if self.base.startswith("https") else False

    def login(self, conn: kopf.ConnectionInfo) -> None:
        """Use new credentials (kopf logged in again) for every call from now on.

        The old session is not closed at once: calls that started on it keep it until they
        end, which :data:`SESSION_TIMEOUT_S` bounds, and it is closed after that grace period
        (at once by :meth:`close`). Calls from now on open a session with the new credentials.
        """
        self._use(conn)
        old, self._session = self._session, None
        if old is not None:
            loop = asyncio.get_running_loop()
            self._retired[old] = loop.create_task(self._close_later(old), name="modelpress-old-session")

    async def _close_later(self, session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(SESSION_TIMEOUT_S)
        self._retired.pop(session, None)
        await session.close()

    def _reload_token(self) -> bool:
        """Pick up a rotated service-account token; True when it changed (worth a retry)."""
        try:
            with open(self.token_path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError:
            return False
        header = f"Bearer {token}"
        if not token or self._session_args["headers"].get("Authorization") == header:
            return False
        self._session_args["headers"]["Authorization"] = header
        if self._session is not None:
            self._session.headers["Authorization"] = header
        return True

    async def close(self) -> None:
        """Close the session, and any left from before the last :meth:`login`."""
        retired, self._retired = self._retired, {}
        for session, task in retired.items():
            task.cancel()
            await session.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32),
                timeout=aiohttp.ClientTimeout(total=SESSION_TIMEOUT_S),
                **self._session_args,
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        retry_conflicts: bool = False,
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        for attempt in range(RETRIES):
            try:
                async with self._client().request(
                    method, self.base + path, data=data, params=params, headers=headers
                ) as resp:
                    text = await resp.text()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                status, text = 503, json.dumps({"reason": type(exc).__name__, "message": str(exc)})
            if status < 300:
                return json.loads(text) if text else {}
            if status == 401 and attempt == 0 and self._reload_token():
                continue
            try:
                payload = json.loads(text)
            except ValueError:
                payload = {"message": text[:200]}
            reason = str(payload.get("reason", "")) if isinstance(payload, dict) else ""
            message = str(payload.get("message", "")) if isinstance(payload, dict) else text[:200]
            transient = (
                status >= 500 or status == 429 or (status == 409 and retry_conflicts and reason != "AlreadyExists")
            )
            if not transient or attempt == RETRIES - 1:
                raise api_error(status, reason, message)
            delay = min(BACKOFF_MAX_S, BACKOFF_S * 2**attempt)
            log.debug("%s %s -> %s %s; retrying in %.1fs", method, path, status, reason, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def create(self, obj: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """(object, created). An object of that name already there counts as success."""
        meta = obj["metadata"]
        plural = PLURALS[(obj["apiVersion"], obj["kind"])]
        path = resource_path(obj["apiVersion"], plural, meta.get("namespace"))
        try:
            return await self.request("POST", path, obj, params=WRITE_PARAMS), True
        except (AlreadyExists, Conflict):  # a 409: names are deterministic, so it is ours
            pass
        existing = await self.request(
            "GET", resource_path(obj["apiVersion"], plural, meta.get("namespace"), meta["name"])
        )
        return existing, False

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return await self.request("GET", resource_path(api_version, PLURALS[(api_version, kind)], namespace, name))

    async def find(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist (404)."""
        try:
            return await self.get(api_version, kind, namespace, name)
        except NotFound:
            return None

    async def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """RFC 7386 merge patch of the object itself (a null removes a field)."""
        path = resource_path(api_version, PLURALS[(api_version, kind)], namespace, name)
        return await self.request(
            "PATCH", path, patch, content_type="application/merge-patch+json", params=WRITE_PARAMS
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None) -> bool:
        """Delete in the background (owned objects follow by garbage collection).

        With ``uid`` the API server deletes only that exact object (a precondition), so a
        same-named object created meanwhile by someone else is left alone. False when
        there was nothing to delete.
        """
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request(
                "DELETE", resource_path(api_version, PLURALS[(api_version, kind)], namespace, name), body
            )
        except NotFound:
            return False
        return True

    async def list(
        self, api_version: str, kind: str, namespace: str, label_selector: str = "", field_selector: str = ""
    ) -> list[dict[str, Any]]:
        path = resource_path(api_version, PLURALS[(api_version, kind)], namespace)
        params = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        return (await self.request("GET", path, params=params)).get("items", [])

    async def patch_model_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        """Merge-patch ``status`` through the status subresource (spec is never written).

        With ``resource_version`` the write only lands on that exact version; a 409 then
        raises :class:`Conflict` and the caller acts on the next event instead.
        """
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        path = resource_path(api.API_VERSION, api.PLURAL, namespace, name, "status")
        return await self.request(
            "PATCH",
            path,
            body,
            content_type="application/merge-patch+json",
            params={"fieldManager": FIELD_MANAGER},
            retry_conflicts=resource_version is None,
        )

    async def post_event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the object (best effort: an Event is never worth failing for)."""
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace") or "default"},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", api.API_VERSION),
                "kind": involved.get("kind", api.KIND),
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "modelpress-operator"},
            "reportingComponent": "modelpress-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.request("POST", resource_path("v1", "events", event["metadata"]["namespace"]), event)
        except ApiError as exc:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], exc)
