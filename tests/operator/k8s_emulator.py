"""An API-server stand-in: kmock's KubernetesEmulator, extended where the operator depends on it.

kmock serves discovery (``/api``, ``/apis/...``) and the HTTP plumbing; this subclass
replaces its simple object store with the parts of kube-apiserver's behaviour that an
operator relies on:

- ``metadata.uid``, a global ``resourceVersion``, ``creationTimestamp``, ``generateName``;
- ``generation`` bumps on spec changes only (not metadata, not status);
- the ``status`` subresource: writes to the object ignore status, writes to ``/status``
  touch nothing else;
- optimistic concurrency: a stale ``metadata.resourceVersion`` in a patch/PUT is a 409;
- merge patches (RFC 7386) and JSON patches (RFC 6902, including ``test``);
- label and ``metadata.name`` field selectors on list and watch;
- watch resume from a ``resourceVersion`` (410 Gone when too old), ``timeoutSeconds``;
- cascading deletion through ``ownerReferences``; a uid precondition on delete;
  409 AlreadyExists on create;
- built-in kinds (Job, Pod, ConfigMap) decoded and validated as the server does, with
  its 400/422 answers (:mod:`k8s_validation`); ``fieldValidation=Strict`` refuses unknown
  fields;
- the admission a Pod meets (https://kubernetes.io/docs/reference/access-authn-authz/admission-controllers/):
  ``ServiceAccount`` refuses a pod whose service account does not exist, ``Priority`` one
  whose PriorityClass does not exist (403 Forbidden; the Job controller then records a
  ``FailedCreate`` Event and creates no pod).

It is fast on purpose: kmock's own request log and DSL matching grow with every request
(quadratic: 200 models took 69 s), so resource requests bypass them and only a compact
audit record ``(verb, group, resource, subresource, namespace)`` is kept per request.
Faults can be injected per verb/resource to prove the operator retries.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import attrs
import k8s_validation
import kmock

STATUS_SUBRESOURCE = {("modelpress.io", "compressedmodels"), ("batch", "jobs"), ("", "pods")}
EVENT_LOG_SIZE = 200_000

Key = tuple[str, str]  # (group, plural)
ObjKey = tuple[str, str, str, str]  # (group, plural, namespace, name)
# (resourceVersion, type, object, watch line); the log keeps b"" for the line and serialises it on replay
LogEntry = tuple[int, str, dict[str, Any], bytes]


@dataclass(frozen=True)
class Audit:
    """One request as RBAC sees it."""

    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    label_selector: str = ""  # not part of RBAC; lets tests check server-side filtering
    resource_version: str = ""  # ... and watch resumption


@dataclass
class Fault:
    """Answer the next ``times`` matching requests with ``status`` instead of serving them."""

    verb: str
    resource: str
    status: int
    times: int = 1
    subresource: str = ""
    hits: int = 0


@dataclass
class Watcher:
    key: Key
    namespace: str | None
    selector: Callable[[Mapping[str, Any]], bool]
    queue: asyncio.Queue[LogEntry] = field(default_factory=asyncio.Queue)


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_path(path: str) -> tuple[str, str, str | None, str, str | None, str] | None:
    """(group, version, namespace, plural, name, subresource) or None for non-resource paths."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return None
    plural, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else ""
    return group, version, namespace, plural, name, sub


_REQ = re.compile(r"^\s*(!?)([A-Za-z0-9./_-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


class LabelSelector:
    """Equality- and set-based selectors as kube-apiserver parses them; called on an object, says if it matches."""

    def __init__(self, text: str | None):
        self.terms: list[tuple[str, str, str | None, str | None, str | None, set[str]]] = []
        for raw in re.split(r",(?![^(]*\))", text) if text else []:
            m = _REQ.match(raw)
            if not m:
                raise ApiError(400, "BadRequest", f"unable to parse requirement: {raw!r}")
            neg, key, op, val, setop, setvals = m.groups()
            values = {v.strip() for v in (setvals or "").split(",") if v.strip()}
            self.terms.append((neg, key, op, val, setop, values))

    def __call__(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for neg, key, op, val, setop, values in self.terms:
            if op in ("=", "=="):
                ok = labels.get(key) == val
            elif op == "!=":
                ok = labels.get(key) != val
            elif setop == "in":
                ok = labels.get(key) in values
            elif setop == "notin":
                ok = labels.get(key) not in values
            else:
                ok = (key in labels) != bool(neg)
            if not ok:
                return False
        return True

    def index_keys(self) -> list[tuple[str, str | None]] | None:
        """Label-index keys whose objects include every match (``(key, None)``: has the key), or None
        when no term narrows it down (``!=``, ``notin``, ``!key``): then every object of the kind is a candidate."""
        for _neg, key, op, val, _setop, _values in self.terms:
            if op in ("=", "=="):
                return [(key, val or "")]
        for _neg, key, _op, _val, setop, values in self.terms:
            if setop == "in":
                return [(key, v) for v in sorted(values)]
        for neg, key, op, _val, setop, _values in self.terms:
            if not neg and not op and not setop:
                return [(key, None)]
        return None


def label_selector(text: str | None) -> LabelSelector:
    """Equality- and set-based selectors as kube-apiserver parses them."""
    return LabelSelector(text)


# Field selectors each kind supports besides metadata.name/namespace
# (https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/#supported-fields;
# for Events, the fields kube-apiserver's event strategy exposes).
EVENT_FIELDS = frozenset(
    {
        *(f"involvedObject.{f}" for f in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion")),
        *("reason", "reportingComponent", "source", "type"),
    }
)
FIELD_LABELS = {"events": EVENT_FIELDS}


def field_selector(text: str | None, plural: str = "") -> Callable[[Mapping[str, Any]], bool]:
    """Equality selectors (``a=b``, ``a==b``, ``a!=b``) over the fields the kind supports."""
    if not text:
        return lambda obj: True
    terms = []
    for term in text.split(","):
        negate = "!=" in term
        k, _, v = term.partition("!=" if negate else "=")
        if k not in ("metadata.name", "metadata.namespace") and k not in FIELD_LABELS.get(plural, ()):
            raise ApiError(400, "BadRequest", f"field label not supported: {k}")
        terms.append((k.split("."), v.lstrip("="), negate))

    def value(obj: Mapping[str, Any], path: list[str]) -> str:
        node: Any = obj
        for part in path:
            node = (node or {}).get(part) if isinstance(node, Mapping) else None
        if path == ["source"]:  # an Event's "source" selector matches source.component
            node = (node or {}).get("component") if isinstance(node, Mapping) else node
        return "" if node is None else str(node)

    return lambda obj: all((value(obj, path) == v) != negate for path, v, negate in terms)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _pointer(doc: Any, pointer: str) -> tuple[Any, str | int]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    last: str | int = parts[-1]
    if isinstance(doc, list):
        last = len(doc) if last == "-" else int(last)
    return doc, last


def json_patch(doc: dict[str, Any], ops: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """RFC 6902; a failed ``test`` is a 422 (Invalid) as on a real API server."""
    doc = copy.deepcopy(doc)
    for op in ops:
        try:
            parent, key = _pointer(doc, op["path"])
            kind = op["op"]
            if kind == "test":
                if parent[key] != op["value"]:
                    raise ApiError(
                        422,
                        "Invalid",
                        f"the server rejected our request due to an error in our request: test failed at {op['path']}",
                    )
            elif kind == "remove":
                del parent[key]
            elif kind == "add":
                if isinstance(parent, list):
                    parent.insert(key, copy.deepcopy(op["value"]))  # type: ignore[arg-type]
                else:
                    parent[key] = copy.deepcopy(op["value"])
            elif kind == "replace":
                parent[key]  # noqa: B018 - must exist
                parent[key] = copy.deepcopy(op["value"])
            else:
                raise ApiError(422, "Invalid", f"unsupported json-patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"json patch {op}: {exc!r}") from None
    return doc


class Store(MutableMapping[ObjKey, dict[str, Any]]):
    """The stored objects, as one mapping ``(group, plural, namespace, name) -> object``, kept per kind
    with a label index and an owner index, as etcd's key prefixes and the watch cache's indexes are.

    Hand-written on purpose: with one flat dict, every list, watch and cascading delete scanned
    every object of every kind, so the stand-in cost grew with the square of the number of
    models and, not the operator, set the pace of the scale benchmark. Lists, watches and
    owner look-ups now touch only the objects they return (in creation order, as before).
    """

    def __init__(self) -> None:
        self._kinds: dict[Key, dict[tuple[str, str], dict[str, Any]]] = {}
        self._seq: dict[ObjKey, int] = {}  # creation order, for listing in the order of a flat store
        self._next = 0
        # (group, plural) -> (label key, value or None for "has the key") -> objects carrying it
        self._labels: dict[Key, dict[tuple[str, str | None], set[ObjKey]]] = {}
        self._owned: dict[str, set[ObjKey]] = {}  # owner uid -> dependents

    def __getitem__(self, key: ObjKey) -> dict[str, Any]:
        return self._kinds[key[:2]][key[2:]]

    def __contains__(self, key: object) -> bool:
        return key in self._seq

    def __setitem__(self, key: ObjKey, obj: dict[str, Any]) -> None:
        kind = self._kinds.setdefault(key[:2], {})
        old = kind.get(key[2:])
        kind[key[2:]] = obj
        if old is None:
            self._seq[key] = self._next
            self._next += 1
        old_labels, new_labels = _label_keys(old), _label_keys(obj)
        index = self._labels.setdefault(key[:2], {})
        for lk in old_labels - new_labels:
            index[lk].discard(key)
        for lk in new_labels - old_labels:
            index.setdefault(lk, set()).add(key)
        old_owners, new_owners = _owner_uids(old), _owner_uids(obj)
        for uid in old_owners - new_owners:
            self._owned[uid].discard(key)
        for uid in new_owners - old_owners:
            self._owned.setdefault(uid, set()).add(key)

    def __delitem__(self, key: ObjKey) -> None:
        obj = self._kinds[key[:2]].pop(key[2:])
        del self._seq[key]
        for lk in _label_keys(obj):
            self._labels[key[:2]][lk].discard(key)
        for uid in _owner_uids(obj):
            self._owned[uid].discard(key)

    def __iter__(self) -> Iterator[ObjKey]:
        return iter(sorted(self._seq, key=self._seq.__getitem__))

    def __len__(self) -> int:
        return len(self._seq)

    def kind(self, group: str, plural: str, ns: str | None = None) -> list[dict[str, Any]]:
        """Every object of one kind (in one namespace), in creation order."""
        objects = self._kinds.get((group, plural), {})
        return [o for (n, _), o in objects.items() if ns is None or n == ns]

    def select(self, group: str, plural: str, ns: str | None, labels: LabelSelector) -> list[dict[str, Any]]:
        """The objects of one kind (in one namespace) that ``labels`` selects, in creation order."""
        index_keys = labels.index_keys()
        if index_keys is None:
            candidates = self.kind(group, plural, ns)
        else:
            index = self._labels.get((group, plural), {})
            keys = set().union(*(index.get(k, ()) for k in index_keys))
            ordered = sorted((k for k in keys if ns is None or k[2] == ns), key=self._seq.__getitem__)
            candidates = [self[k] for k in ordered]
        return [o for o in candidates if labels(o)]

    def owned_by(self, uid: str) -> list[ObjKey]:
        """The objects whose ownerReferences name ``uid``, in creation order."""
        return sorted(self._owned.get(uid, ()), key=self._seq.__getitem__)


def _label_keys(obj: Mapping[str, Any] | None) -> set[tuple[str, str | None]]:
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return {(k, str(v)) for k, v in labels.items()} | {(k, None) for k in labels}


def _owner_uids(obj: Mapping[str, Any] | None) -> set[str]:
    refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return {r["uid"] for r in refs if isinstance(r, Mapping) and r.get("uid")}


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator with kube-apiserver semantics and an RBAC audit trail."""

    store: Store = attrs.field(factory=Store, init=False)
    audit: list[Audit] = attrs.field(factory=list, init=False)
    faults: list[Fault] = attrs.field(factory=list, init=False)
    rv: int = attrs.field(default=1000, init=False)
    log: dict[Key, collections.deque[LogEntry]] = attrs.field(
        factory=lambda: collections.defaultdict(lambda: collections.deque(maxlen=EVENT_LOG_SIZE)), init=False
    )
    evicted: dict[Key, int] = attrs.field(factory=dict, init=False)
    watchers: list[Watcher] = attrs.field(factory=list, init=False)
    listeners: list[Callable[[str, str, dict[str, Any]], None]] = attrs.field(factory=list, init=False)
    # Ends every watch after this many seconds (as API servers do, at random, in real life),
    # so tests can prove that clients resume from their last resourceVersion.
    watch_limit_s: float | None = attrs.field(default=None, init=False)
    # Validate built-in kinds as kube-apiserver does; the scale benchmark turns it off to
    # measure the operator rather than schema validation.
    validate_builtin: bool = attrs.field(default=True, init=False)
    # Custom resources validated against their CRD's structural schema and CEL rules, as
    # kube-apiserver does: (group, plural) -> (kind, version, openAPIV3Schema).
    crd_schemas: dict[Key, tuple[str, str, dict[str, Any]]] = attrs.field(factory=dict, init=False)
    _cel: Any = attrs.field(default=None, init=False)

    def declare(self, group: str, version: str, plural: str, kind: str, namespaced: bool = True) -> None:
        subs = {"status"} if (group, plural) in STATUS_SUBRESOURCE else set()
        prefix = f"{group}/{version}" if group else version
        self.resources[f"{prefix}/{plural}"] = kmock.ResourceInfo(
            kind=kind,
            namespaced=namespaced,
            singular=kind.lower(),
            subresources=subs,
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        )

    # ------------------------------------------------------------------ HTTP entry

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        parsed = parse_path(raw.path)
        if parsed is None:
            return await super().__call__(raw)  # discovery and anything else: kmock as is
        group, version, ns, plural, name, sub = parsed
        q = raw.query
        method = raw.method.upper()
        watch = q.get("watch") in ("1", "true")
        verb = {
            "GET": "watch" if watch else ("get" if name else "list"),
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }.get(method, method.lower())
        self.audit.append(
            Audit(verb, group, plural, sub, ns or "", q.get("labelSelector", ""), q.get("resourceVersion", ""))
        )
        try:
            self._inject_fault(verb, plural, sub)
            body = await raw.read()
            data = json.loads(body) if body else None
            if verb == "watch":
                return await self._watch(raw, group, plural, ns, q)
            if verb == "list":
                return _json(
                    self.list_objects(group, version, plural, ns, q.get("labelSelector"), q.get("fieldSelector"))
                )
            if verb == "get":
                return _json(self._get(group, plural, ns, name, sub))
            strict = q.get("fieldValidation") == "Strict"
            if verb == "create":
                return _json(self.create(group, plural, ns, data, version, strict_fields=strict, owned=True), 201)
            if verb == "patch":
                content_type = raw.headers.get("Content-Type", "")
                return _json(self.patch(group, plural, ns, name, sub, data, content_type, strict_fields=strict))
            if verb == "update":
                return _json(self.replace(group, plural, ns, name, sub, data, strict_fields=strict))
            if verb == "delete":
                uid = ((data or {}).get("preconditions") or {}).get("uid")
                return _json(self.delete(group, plural, ns, name, uid))
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")
        except ApiError as exc:
            return _status(exc.status, exc.reason, exc.message)

    def _inject_fault(self, verb: str, plural: str, sub: str) -> None:
        for fault in self.faults:
            if fault.times > 0 and fault.verb == verb and fault.resource == plural and fault.subresource == sub:
                fault.times -= 1
                fault.hits += 1
                reason = {409: "Conflict", 500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests"}
                raise ApiError(fault.status, reason.get(fault.status, "Injected"), "injected by the test")

    # ------------------------------------------------------------------ storage

    def _emit(self, group: str, plural: str, type_: str, obj: dict[str, Any]) -> None:
        # Stored objects are never mutated in place (every write builds a new dict), so the
        # log can share them; each event is serialised once for all watchers, and the log
        # keeps no serialised copy (a resumed watch serialises what it replays).
        rv = int(obj["metadata"]["resourceVersion"])
        entry = (rv, type_, obj, _watch_line(type_, obj))
        log = self.log[(group, plural)]
        if log.maxlen is not None and len(log) == log.maxlen:
            self.evicted[(group, plural)] = log[0][0]  # watches from before this are Gone
        log.append((rv, type_, obj, b""))
        for w in self.watchers:
            if w.key == (group, plural):
                w.queue.put_nowait(entry)
        for listener in list(self.listeners):
            listener(plural, type_, obj)

    def _bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def _get(self, group: str, plural: str, ns: str | None, name: str, sub: str = "") -> dict[str, Any]:
        obj = self.store.get((group, plural, ns or "", name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{plural}.{group or "core"} "{name}" not found')
        return obj

    def get(self, group: str, plural: str, ns: str | None, name: str) -> dict[str, Any] | None:
        obj = self.store.get((group, plural, ns or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def objects(self, group: str, plural: str, ns: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for o in self.store.kind(group, plural, ns)]

    def list_objects(
        self,
        group: str,
        version: str,
        plural: str,
        ns: str | None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> dict[str, Any]:
        lsel, fsel = label_selector(labels), field_selector(fields, plural)
        items = [o for o in self.store.select(group, plural, ns, lsel) if fsel(o)]
        return {
            "apiVersion": f"{group}/{version}" if group else version,
            "kind": "List",
            "metadata": {"resourceVersion": str(self.rv)},
            "items": items,
        }

    def _admit(self, group: str, plural: str, obj: Mapping[str, Any], strict_fields: bool) -> None:
        """Decoding, validation and the admission plugins a write of ``obj`` meets."""
        if not self.validate_builtin:
            return
        try:
            k8s_validation.check(group, plural, obj, strict_fields)
        except k8s_validation.Rejected as exc:
            raise ApiError(exc.status, exc.reason, exc.message) from None
        if (group, plural) == ("", "pods"):
            self._admit_pod(obj)
        if (group, plural) in self.crd_schemas:
            self._validate_custom(group, plural, obj, strict_fields)

    def _validate_custom(self, group: str, plural: str, obj: Mapping[str, Any], strict_fields: bool) -> None:
        """Decoding (unknown ObjectMeta fields; nulls pruned where not nullable), then the CRD's
        schema with defaults and its CEL rules
        (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#validation)."""
        from crd_check import CelEvaluator, api_server_verdict

        from modelpress.validate import OBJECT_META_FIELDS

        kind, version, schema = self.crd_schemas[(group, plural)]
        unknown = sorted(set(obj.get("metadata") or {}) - OBJECT_META_FIELDS)
        if unknown and strict_fields:
            raise ApiError(
                400,
                "BadRequest",
                f'{kind} in version "{version}" cannot be handled as a {kind}: '
                f'strict decoding error: unknown field "metadata.{unknown[0]}"',
            )
        labels = list(k8s_validation.label_problems("metadata.labels", (obj.get("metadata") or {}).get("labels") or {}))
        if labels:  # ObjectMeta is validated for every kind
            name = (obj.get("metadata") or {}).get("name")
            raise ApiError(422, "Invalid", f'{kind}.{group} "{name}" is invalid: {labels[0]}')
        pruned = {k: v for k, v in _decoded(obj).items() if k != "status"}
        if self._cel is None:
            self._cel = CelEvaluator()
        errors = api_server_verdict(schema, pruned, self._cel)
        if errors:
            name = (obj.get("metadata") or {}).get("name")
            text = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
            raise ApiError(422, "Invalid", f'{kind}.{group} "{name}" is invalid: {text}')

    def _admit_pod(self, pod: Mapping[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        ns, name = meta.get("namespace") or "", meta.get("name") or meta.get("generateName", "")
        account = spec.get("serviceAccountName") or "default"
        if "v1/serviceaccounts" in self.resources and ("", "serviceaccounts", ns, account) not in self.store:
            raise ApiError(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: error looking up service account {ns}/{account}: '
                f'serviceaccount "{account}" not found',
            )
        priority = spec.get("priorityClassName")
        declared = "scheduling.k8s.io/v1/priorityclasses" in self.resources
        if priority and declared and ("scheduling.k8s.io", "priorityclasses", "", priority) not in self.store:
            raise ApiError(
                403, "Forbidden", f'pods "{name}" is forbidden: no PriorityClass with name {priority} was found'
            )

    def create(
        self,
        group: str,
        plural: str,
        ns: str | None,
        data: Any,
        version: str = "v1",
        strict_fields: bool = True,
        owned: bool = False,
    ) -> dict[str, Any]:
        """``owned``: ``data`` is the server's own (a request body just decoded), so it is stored
        without a copy; a caller's dict is copied, so the caller may keep changing it."""
        if not isinstance(data, dict) or not isinstance(data.get("metadata"), dict):
            raise ApiError(400, "BadRequest", "object has no metadata")
        obj = data if owned else copy.deepcopy(data)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        ns = ns or meta.get("namespace") or ""
        if ns:
            meta["namespace"] = ns
        self._admit(group, plural, obj, strict_fields)
        key = (group, plural, ns, meta["name"])
        if key in self.store:
            raise ApiError(409, "AlreadyExists", f'{plural}.{group or "core"} "{meta["name"]}" already exists')
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        meta.pop("resourceVersion", None)
        if (group, plural) in STATUS_SUBRESOURCE:
            obj.pop("status", None)
        self._bump(obj)
        self.store[key] = obj
        self._emit(group, plural, "ADDED", obj)
        return obj

    def _write(
        self,
        group: str,
        plural: str,
        ns: str | None,
        name: str,
        sub: str,
        new: dict[str, Any],
        precondition: str | None,
        strict_fields: bool = True,
    ) -> dict[str, Any]:
        old = self._get(group, plural, ns, name)
        if precondition and precondition != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {plural}.{group} "{name}": '
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        result = dict(old)  # shallow: nested values are replaced, never mutated
        if (group, plural) in STATUS_SUBRESOURCE:
            if sub == "status":
                result["status"] = new.get("status", {})
            else:
                result.update({k: v for k, v in new.items() if k not in ("status", "metadata")})
                for k in [k for k in result if k not in new and k not in ("status", "metadata", "apiVersion", "kind")]:
                    del result[k]
                result["metadata"] = self._merge_meta(old["metadata"], new.get("metadata") or {})
        else:
            result = {**new, "metadata": self._merge_meta(old["metadata"], new.get("metadata") or {})}
        if result == old:
            return old  # no-op writes do not bump resourceVersion (as on a real server)
        if sub != "status":
            self._admit(group, plural, result, strict_fields)
        if sub != "status" and _spec_of(result) != _spec_of(old):
            result["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        self._bump(result)
        key = (group, plural, ns or "", name)
        meta = result["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self.store[key]
            self._emit(group, plural, "DELETED", result)
            self._cascade(meta["uid"])
            return result
        self.store[key] = result
        self._emit(group, plural, "MODIFIED", result)
        return result

    @staticmethod
    def _merge_meta(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
        """Server-owned metadata fields cannot be changed by clients."""
        meta = dict(new)
        for k in (
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
            "namespace",
            "name",
        ):
            if k in old:
                meta[k] = old[k]
            else:
                meta.pop(k, None)
        return meta

    def patch(
        self,
        group: str,
        plural: str,
        ns: str | None,
        name: str,
        sub: str,
        data: Any,
        content_type: str,
        strict_fields: bool = True,
    ) -> dict[str, Any]:
        old = self._get(group, plural, ns, name)
        if "json-patch" in content_type:
            new = json_patch(old, data or [])
            precondition = None
        else:  # merge-patch (strategic merge is treated as merge: the operator does not rely on it)
            new = merge_patch(old, data or {})
            precondition = ((data or {}).get("metadata") or {}).get("resourceVersion")
        new.setdefault("metadata", {})
        return self._write(group, plural, ns, name, sub, new, precondition, strict_fields)

    def replace(
        self, group: str, plural: str, ns: str | None, name: str, sub: str, data: Any, strict_fields: bool = True
    ) -> dict[str, Any]:
        precondition = ((data or {}).get("metadata") or {}).get("resourceVersion")
        if not precondition:
            raise ApiError(422, "Invalid", "metadata.resourceVersion: must be specified for an update")
        return self._write(group, plural, ns, name, sub, data, precondition, strict_fields)

    def delete(self, group: str, plural: str, ns: str | None, name: str, uid: str | None = None) -> dict[str, Any]:
        """``uid``: DeleteOptions.preconditions.uid, a 409 when the object is another one."""
        key = (group, plural, ns or "", name)
        obj = self._get(group, plural, ns, name)
        if uid and obj["metadata"]["uid"] != uid:
            raise ApiError(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: {obj['metadata']['uid']}",
            )
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj = {**obj, "metadata": {**obj["metadata"], "deletionTimestamp": now()}}
                self._bump(obj)
                self.store[key] = obj
                self._emit(group, plural, "MODIFIED", obj)
            return obj
        del self.store[key]
        obj = {**obj, "metadata": dict(obj["metadata"])}
        self._bump(obj)
        self._emit(group, plural, "DELETED", obj)
        self._cascade(obj["metadata"]["uid"])
        return obj

    def _cascade(self, uid: str) -> None:
        """The garbage collector, in the background-propagation style."""
        for g, p, n, name in self.store.owned_by(uid):
            if (g, p, n, name) in self.store:  # not gone with an earlier dependent
                self.delete(g, p, n, name)

    # ------------------------------------------------------------------ watch

    async def _watch(
        self, raw: aiohttp.web.BaseRequest, group: str, plural: str, ns: str | None, q: Mapping[str, str]
    ) -> aiohttp.web.StreamResponse:
        sel_l, sel_f = label_selector(q.get("labelSelector")), field_selector(q.get("fieldSelector"), plural)

        def wanted(obj: Mapping[str, Any]) -> bool:
            return (ns is None or obj["metadata"].get("namespace") == ns) and sel_l(obj) and sel_f(obj)

        watcher = Watcher((group, plural), ns, wanted)
        since = q.get("resourceVersion")
        backlog: list[LogEntry]
        if since in (None, "", "0"):
            backlog = [
                (int(o["metadata"]["resourceVersion"]), "ADDED", o, b"")
                for o in self.store.select(group, plural, ns, sel_l)
            ]
        else:
            log = self.log[(group, plural)]
            if int(since) < self.evicted.get((group, plural), 0):
                gone = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "code": 410,
                    "reason": "Expired",
                    "message": f"too old resource version: {since}",
                }
                backlog = [(0, "ERROR", gone, json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")]
            else:
                backlog = [e for e in log if e[0] > int(since)]
        self.watchers.append(watcher)
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(raw)
        timeout = float(q.get("timeoutSeconds") or 1800)
        if self.watch_limit_s is not None:
            timeout = min(timeout, self.watch_limit_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            for _rv, type_, obj, line in backlog:
                if type_ == "ERROR" or wanted(obj):
                    await resp.write(line or _watch_line(type_, obj))
                if type_ == "ERROR":
                    return resp
            seen = max((e[0] for e in backlog), default=0)
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    rv, type_, obj, line = await asyncio.wait_for(watcher.queue.get(), left)
                except TimeoutError:
                    break
                if rv > seen and wanted(obj):
                    await resp.write(line)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.remove(watcher)
        return resp


def _watch_line(type_: str, obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": type_, "object": obj}).encode() + b"\n"


def _json(obj: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.Response(body=json.dumps(obj).encode(), status=status, content_type="application/json")


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    return _json(
        {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": code,
            "reason": reason,
            "message": message,
        },
        code,
    )


def _decoded(value: Any) -> Any:
    """A custom resource as the API server validates it: nulls pruned from mappings where
    the schema is not nullable, and whole numbers written as floats (``1.0``) taken as the
    integers they are (kube-openapi's validator accepts them for ``type: integer``)."""
    if isinstance(value, dict):
        return {k: _decoded(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _spec_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Everything but metadata and status: what bumps metadata.generation."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def rbac_usage(audit: Iterable[Audit]) -> list[tuple[str, str, str, str, str]]:
    """Distinct (verb, group, resource, subresource, namespace) the operator used, sorted.

    The packaging helper compares this with the chart's Role/ClusterRole so RBAC is exact.
    """
    return sorted({(a.verb, a.group, a.resource, a.subresource, a.namespace) for a in audit})


def count_requests(audit: Iterable[Audit]) -> dict[str, int]:
    """Reads (get/list/watch) and writes (everything else)."""
    counts = collections.Counter("read" if a.verb in ("get", "list", "watch") else "write" for a in audit)
    return {"read": counts.get("read", 0), "write": counts.get("write", 0)}
