"""What kube-apiserver checks on built-in objects before it stores them, for the emulator.

Two layers, as on a real server:

1. **Decoding** against the OpenAPI schema of the kind (``kubernetes-validate``'s copy
   of the v1.36 schemas): a value of the wrong type, or a malformed ``Quantity``, is a
   **400 BadRequest** "cannot be handled as a <Kind>"; an unknown field is a 400
   "strict decoding error" when the client asked for ``fieldValidation=Strict``
   (https://kubernetes.io/docs/reference/using-api/api-concepts/#field-validation).
2. **Validation** (the ``ValidateJob`` / ``ValidatePod`` code behind
   https://kubernetes.io/docs/concepts/overview/working-with-objects/names/ and
   https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set):
   object and container names, label keys and values (metadata and ``nodeSelector``),
   tolerations (https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/),
   requests not above limits
   (https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/) —
   a **422 Invalid** "<Kind>.<group> "<name>" is invalid: <path>: Invalid value: ...".

Only the rules an operator can trip with what it builds are modelled; the message
shapes are the server's, so the operator's error handling meets what it will meet.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import kubernetes_validate

K8S_VERSION = "1.36.0"
# apimachinery's resource.Quantity grammar (the regular expression the server quotes in errors is looser).
QUANTITY = re.compile(r"^([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)((?:[KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
QUANTITY_ERROR = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
_SUFFIX = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1)},
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
}
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
KINDS = {("batch", "jobs"): ("batch/v1", "Job"), ("", "pods"): ("v1", "Pod"), ("", "configmaps"): ("v1", "ConfigMap")}


class Rejected(Exception):
    """The server's refusal: HTTP status, reason and message as it would send them."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def parse_quantity(text: Any) -> Decimal:
    """A Quantity's value; ValueError when apimachinery could not parse it."""
    m = QUANTITY.match(str(text))
    if not m:
        raise ValueError(QUANTITY_ERROR)
    sign, number, suffix = m.groups()
    try:
        value = Decimal(number)
        if suffix and suffix[0] in "eE" and suffix not in _SUFFIX:
            value *= Decimal(10) ** int(suffix[1:])
        else:
            value *= _SUFFIX[suffix or ""]
    except (InvalidOperation, ValueError):
        raise ValueError(QUANTITY_ERROR) from None
    return -value if sign == "-" else value


def check(group: str, plural: str, obj: Mapping[str, Any], strict_fields: bool) -> None:
    """Raise :class:`Rejected` as kube-apiserver would for this built-in object; no-op for other kinds."""
    if (group, plural) not in KINDS:
        return
    api_version, kind = KINDS[(group, plural)]
    name = (obj.get("metadata") or {}).get("name") or (obj.get("metadata") or {}).get("generateName", "")
    full = {"apiVersion": api_version, "kind": kind, **obj}
    _decode(kind, full, strict_fields)
    errors = list(_validate(kind, full))
    if errors:
        what = f"{kind}.{group}" if group else kind
        text = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
        raise Rejected(422, "Invalid", f'{what} "{name}" is invalid: {text}')


def _decode(kind: str, obj: Mapping[str, Any], strict_fields: bool) -> None:
    for value in _quantities(kind, obj):
        try:
            parse_quantity(value)
        except ValueError as exc:
            raise Rejected(400, "BadRequest", f'{kind} in version "v1" cannot be handled as a {kind}: {exc}') from None
    try:
        kubernetes_validate.validate(dict(obj), K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:  # a jsonschema.ValidationError's fields
        where = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "additionalProperties":
            if not strict_fields:
                return  # fieldValidation Warn/Ignore: the server drops the field (with a Warning header)
            extra = re.findall(r"'([^']+)' was unexpected", err.message) or ["?"]
            field = f"{where}.{extra[0]}" if where else extra[0]
            raise Rejected(
                400,
                "BadRequest",
                f'{kind} in version "v1" cannot be handled as a {kind}: strict decoding error: unknown field "{field}"',
            ) from None
        if err.validator == "type":
            raise Rejected(
                400,
                "BadRequest",
                f'{kind} in version "v1" cannot be handled as a {kind}: json: cannot unmarshal '
                f"{type(err.instance).__name__} into Go struct field {where} of type {err.validator_value}",
            ) from None
        raise Rejected(
            422, "Invalid", f'{kind} "{obj.get("metadata", {}).get("name")}" is invalid: {where}: {err.message}'
        ) from None


def _pod_specs(kind: str, obj: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if kind == "Job":
        yield "spec.template.spec", ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    elif kind == "Pod":
        yield "spec", obj.get("spec") or {}


def _containers(pod_path: str, pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for group in ("initContainers", "containers"):
        for i, c in enumerate(pod.get(group) or []):
            yield f"{pod_path}.{group}[{i}]", c


def _quantities(kind: str, obj: Mapping[str, Any]) -> Iterator[Any]:
    """Every Quantity of the pod spec (decoded before validation: the server's message names no path)."""
    for pod_path, pod in _pod_specs(kind, obj):
        for _, c in _containers(pod_path, pod):
            for part in ("requests", "limits"):
                yield from ((c.get("resources") or {}).get(part) or {}).values()
        for v in pod.get("volumes") or []:
            if (v.get("emptyDir") or {}).get("sizeLimit") is not None:
                yield v["emptyDir"]["sizeLimit"]


def _invalid(path: str, value: Any, why: str) -> str:
    return f'{path}: Invalid value: "{value}": {why}'


def _qualified_name(path: str, key: str) -> Iterator[str]:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        yield _invalid(
            path,
            key,
            "prefix part a lowercase RFC 1123 subdomain must consist of lower case "
            "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        )
    if not QUALIFIED_NAME.match(name) or len(name) > 63:
        yield _invalid(
            path,
            key,
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', "
            "regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
        )


def label_problems(path: str, labels: Mapping[str, Any]) -> Iterator[str]:
    for key, value in (labels or {}).items():
        yield from _qualified_name(path, key)
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            yield _invalid(
                f"{path}",
                value,
                "a valid label must be an empty string or consist of alphanumeric "
                "characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            )


def _dns(path: str, value: Any, label: bool) -> Iterator[str]:
    pattern, limit = (DNS1123_LABEL, 63) if label else (DNS1123_SUBDOMAIN, 253)
    if not isinstance(value, str) or len(value) > limit or not pattern.match(value):
        kind = "RFC 1123 label" if label else "lowercase RFC 1123 subdomain"
        yield _invalid(
            path,
            value,
            f"a {kind} must consist of lower case alphanumeric characters or '-', "
            "and must start and end with an alphanumeric character",
        )


def _validate(kind: str, obj: Mapping[str, Any]) -> Iterator[str]:
    meta = obj.get("metadata") or {}
    if meta.get("name"):
        yield from _dns("metadata.name", meta["name"], label=False)
        if kind == "Job" and len(meta["name"]) > 63:  # it becomes the pods' job-name label
            yield _invalid("metadata.name", meta["name"], "must be no more than 63 characters")
    yield from label_problems("metadata.labels", meta.get("labels") or {})
    for pod_path, pod in _pod_specs(kind, obj):
        if kind == "Job":
            yield from label_problems(
                f"{pod_path[:-5]}.metadata.labels",
                ((obj.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {},
            )
        yield from label_problems(f"{pod_path}.nodeSelector", pod.get("nodeSelector") or {})
        for field in ("serviceAccountName", "priorityClassName"):
            if pod.get(field):
                yield from _dns(f"{pod_path}.{field}", pod[field], label=False)
        for i, v in enumerate(pod.get("volumes") or []):
            yield from _dns(f"{pod_path}.volumes[{i}].name", v.get("name"), label=True)
        for path, c in _containers(pod_path, pod):
            yield from _dns(f"{path}.name", c.get("name"), label=True)
            yield from _requests_within_limits(f"{path}.resources", c.get("resources") or {})
        for i, t in enumerate(pod.get("tolerations") or []):
            yield from _toleration(f"{pod_path}.tolerations[{i}]", t)


def _requests_within_limits(path: str, resources: Mapping[str, Any]) -> Iterator[str]:
    limits = resources.get("limits") or {}
    for res, q in (resources.get("requests") or {}).items():
        if res in limits and parse_quantity(q) > parse_quantity(limits[res]):
            yield _invalid(f"{path}.requests", q, f"must be less than or equal to {res} limit of {limits[res]}")
    for part in ("requests", "limits"):
        for res, q in (resources.get(part) or {}).items():
            if parse_quantity(q) < 0:
                yield _invalid(f"{path}.{part}[{res}]", q, "must be greater than or equal to 0")


def _toleration(path: str, t: Mapping[str, Any]) -> Iterator[str]:
    key, op = t.get("key") or "", t.get("operator") or "Equal"
    if key:
        yield from _qualified_name(f"{path}.key", key)
    elif op != "Exists":
        yield _invalid(
            f"{path}.operator",
            op,
            'operator must be Exists when `key` is empty, which means "match all values and all keys"',
        )
    if op == "Exists" and t.get("value"):
        yield _invalid(f"{path}.operator", t["value"], "value must be empty when `operator` is 'Exists'")
    if t.get("tolerationSeconds") is not None and t.get("effect") != "NoExecute":
        yield _invalid(f"{path}.effect", t.get("effect"), "effect must be 'NoExecute' when `tolerationSeconds` is set")
