"""Read CompressedModel specs (YAML or JSON) with every cost bounded.

Every spec that reaches ModelPress as a file, stdin or an environment variable is read
here (``modelpress validate``, ``render``, ``run`` and the Job entrypoint), so a hostile
spec is refused the same way everywhere: one :class:`SpecError` naming the limit and,
where known, the field and line, before it can cost memory, time or a traceback.

Hand-written on purpose: PyYAML's SafeLoader (and ruamel.yaml) bound nothing. An alias
"billion laughs" expands exponentially when constructed, nesting recurses a few Python
frames per level (RecursionError near 500 levels), ``int()`` of 5,000 digits raises
ValueError and explicit tags (``!!bool maybe``, ``!!timestamp x``) raise KeyError or
AttributeError. The checks below hook PyYAML's composer, so they run on the node graph
(where aliases are shared nodes, not copies) before any Python object is built.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import yaml

from modelpress.problems import Problem

# A CompressedModel is a few KiB; etcd refuses objects over 1.5 MiB.
MAX_BYTES = 1024 * 1024
# Nodes of one document with its aliases expanded (a spec has a few dozen).
MAX_NODES = 10_000
# Collections inside collections, aliases expanded (a spec nests about 8 deep).
MAX_DEPTH = 64
# One string: the API server's cap on all annotations of an object together
# (kubectl's last-applied-configuration annotation is a whole object).
MAX_STRING_CHARS = 256 * 1024
# Scalar text of one document with its aliases expanded: a string referred to by
# thousands of aliases would otherwise become gigabytes once converted to JSON.
MAX_EXPANDED_CHARS = 2 * MAX_BYTES
# Kubernetes integers are int64; longer integer text is refused before int() parses it.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_MAX_INT_TEXT = 100

# What each refusal suggests.
_FLATTEN = "a CompressedModel nests about 8 levels; flatten the input"
_SMALLER = "use a value that fits the field"
_FEWER = "a CompressedModel has a few dozen fields; write them out with fewer aliases"
_TAG = "tag:yaml.org,2002:"
# Scalar tags whose construction can fail on the text (the others cannot).
_PARSED_TAGS = {_TAG + name: name for name in ("bool", "int", "float", "timestamp")}


class SpecError(ValueError):
    """The input cannot be read as a spec: unreadable, too big, not YAML/JSON, or over a
    limit. ``problem`` says where (field path or line) and what, in one line; ``field`` is
    the field path when the problem is at a field, else ""."""

    def __init__(self, problem: Problem, field: str = "") -> None:
        self.problem = problem
        self.field = field
        super().__init__(problem.text())


def _size_error() -> SpecError:
    return SpecError(
        Problem(
            "",
            f"input larger than {MAX_BYTES // 1024 // 1024} MiB (limit)",
            "a CompressedModel is a few KiB; the API server refuses objects over 1.5 MiB",
        )
    )


def read_text(path: str | Path) -> str:
    """The text of a spec file (``-`` is stdin), refused past :data:`MAX_BYTES` before
    more than that is read (``/dev/zero`` or a huge file cost nothing)."""
    try:
        if str(path) == "-":
            stream = getattr(sys.stdin, "buffer", None)
            data: bytes | str = stream.read(MAX_BYTES + 1) if stream else sys.stdin.read(MAX_BYTES + 1)
        else:
            with open(path, "rb") as file:
                data = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SpecError(Problem("", f"cannot read the file: {exc.strerror or exc}", "check the path")) from None
    if len(data) > MAX_BYTES:
        raise _size_error()
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            Problem("", f"not UTF-8 text: {exc.reason} at byte {exc.start}", "save the file as UTF-8")
        ) from None


def documents(text: str) -> Iterator[Any]:
    """Each document of a (multi-document) YAML or JSON text as plain data, ``None`` for an
    empty one. Raises :class:`SpecError` at the first document that is not YAML, has a
    duplicate key or is over a limit; the documents before it have been yielded."""
    # The length first: a text of too many characters has too many bytes, without encoding it.
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise _size_error()
    try:
        loader = SpecLoader(text)  # the reader rejects unprintable characters already
    except yaml.YAMLError as exc:
        raise SpecError(yaml_problem(exc)) from None
    try:
        while loader.check_node():
            yield loader.construct_document(loader.get_node())
    except yaml.YAMLError as exc:
        raise SpecError(yaml_problem(exc)) from None
    finally:
        loader.dispose()


def load_one(text: str) -> Any:
    """The one document of a YAML or JSON text (``None`` when empty); :class:`SpecError`
    when there are several or it cannot be read."""
    found: list[Any] = []
    for doc in documents(text):
        if found:
            raise SpecError(Problem("", "holds more than one YAML document", "give one spec per file"))
        found.append(doc)
    return found[0] if found else None


def yaml_problem(exc: yaml.YAMLError) -> Problem:
    """A PyYAML error as a problem located by line and column."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    if isinstance(exc, yaml.reader.ReaderError):
        where, what = f"character {exc.position + 1}", f"{exc.reason} (#x{exc.character:04x})"
    else:
        what = getattr(exc, "problem", None) or str(exc)
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start and start.line != getattr(mark, "line", None):
            what += f" ({context} started at line {start.line + 1}, column {start.column + 1})"
    fix = "remove one of the duplicates" if "duplicate key" in what else "fix the YAML syntax there"
    return Problem(where, f"invalid YAML: {what}", fix)


def check_data(obj: Any) -> None:
    """Refuse parsed data (from the API server's JSON, say) nested deeper than
    :data:`MAX_DEPTH`, with an integer beyond int64 or a string over :data:`MAX_STRING_CHARS`,
    before recursive code (pydantic, JSON encoding) walks it. Iterative, so depth itself
    cannot crash it; a cycle stops at the depth limit."""
    stack: list[tuple[Any, str, int]] = [(obj, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, (Mapping, list, tuple)):
            if depth > MAX_DEPTH:
                raise _error(path, f"nested deeper than {MAX_DEPTH} levels (limit)", _FLATTEN)
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_string(key, path)
                stack.append(
                    (item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}".lstrip("."), depth + 1)
                )
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            raise _error(path, "integer too large (limit: 64-bit)", _SMALLER)
        elif isinstance(value, str):
            _check_string(value, path)


class _Mark(Protocol):
    """Where in the text: PyYAML's pure-Python and libyaml marks both carry these."""

    line: int
    column: int


def _check_string(value: str, path: str, mark: _Mark | None = None) -> None:
    """Refuse one string (value or key) over :data:`MAX_STRING_CHARS`."""
    if len(value) > MAX_STRING_CHARS:
        raise _error(path, f"string of {len(value)} characters, more than {MAX_STRING_CHARS} (limit)", _SMALLER, mark)


def _error(path: str, message: str, fix: str, mark: _Mark | None = None) -> SpecError:
    """A limit problem at a field path and/or a line of the text."""
    if len(path) > 160:  # keys of a hostile spec can be long, and the path has up to MAX_DEPTH of them
        path = f"{path[:70]}...{path[-70:]}"
    if mark is not None:
        line = f"line {mark.line + 1}, column {mark.column + 1}"
        return SpecError(Problem(path, f"{message} at {line}", fix) if path else Problem(line, message, fix), path)
    return SpecError(Problem(path, message, fix), path)


class _Size(NamedTuple):
    """A composed node with its aliases expanded."""

    nodes: int
    depth: int  # collections inside each other: 0 for a scalar
    chars: int  # scalar text


class SpecLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader refusing duplicate mapping keys (PyYAML keeps the last silently)
    and anything over this module's limits, measured while composing each document."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._path: list[str] = []  # field path segments of the node being composed
        self._open_anchors: list[str] = []  # anchors of the collections being composed
        self._sizes: dict[int, _Size] = {}  # id(node) -> its size, for this document
        self._composed = 0  # nodes of this document, aliases not expanded

    def compose_document(self) -> yaml.Node | None:
        self._sizes.clear()
        self._composed = 0
        return super().compose_document()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                message = f"recursive YAML alias *{event.anchor[:40]}: it refers to a collection that holds it"
                raise self._limit(message, event, "write the values out instead of the alias")
            return super().compose_node(parent, index)  # a complete node: its size counts again in the parent
        # Every node on self._path is a collection: this one's ancestors. Checked before
        # PyYAML recurses any deeper (it would raise RecursionError near 500 levels).
        if isinstance(event, yaml.CollectionStartEvent) and len(self._path) >= MAX_DEPTH:
            raise self._limit(f"nested deeper than {MAX_DEPTH} levels (limit)", event, _FLATTEN)
        self._composed += 1
        if self._composed > MAX_NODES:
            raise self._limit(f"more than {MAX_NODES} YAML nodes in one document (limit)", event, _FEWER)
        if isinstance(index, yaml.ScalarNode):
            segment = f".{index.value}"
        else:
            segment = f"[{index}]" if isinstance(index, int) else ""
        self._path.append(segment)
        if event.anchor is not None:
            self._open_anchors.append(event.anchor)
        node = super().compose_node(parent, index)
        if node is not None:  # PyYAML's signature allows None; composing an event always gives a node
            self._sizes[id(node)] = self._measure(node, event)
        if event.anchor is not None:
            self._open_anchors.pop()
        self._path.pop()
        return node

    def _measure(self, node: yaml.Node, event: yaml.Event) -> _Size:
        if isinstance(node, yaml.ScalarNode):
            self._check_scalar(node, event)
            return _Size(1, 0, len(node.value))
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        sizes = [self._sizes[id(child)] for child in children]
        size = _Size(
            1 + sum(s.nodes for s in sizes), 1 + max((s.depth for s in sizes), default=0), sum(s.chars for s in sizes)
        )
        if size.nodes > MAX_NODES:
            raise self._limit(f"YAML aliases expand to more than {MAX_NODES} nodes (limit)", event, _FEWER)
        if len(self._path) - 1 + size.depth > MAX_DEPTH:  # the ancestors, then this node's own depth
            raise self._limit(f"YAML aliases nest deeper than {MAX_DEPTH} levels (limit)", event, _FLATTEN)
        if size.chars > MAX_EXPANDED_CHARS:
            limit = MAX_EXPANDED_CHARS // 1024 // 1024
            raise self._limit(f"YAML aliases expand to more than {limit} MiB of text (limit)", event, _FEWER)
        return size

    def _check_scalar(self, node: yaml.ScalarNode, event: yaml.Event) -> None:
        """Strings within :data:`MAX_STRING_CHARS`; ints, floats, booleans and timestamps
        parsed now, so a bad one is a problem at its field rather than a crash later."""
        _check_string(node.value, self._field(), event.start_mark)
        kind = _PARSED_TAGS.get(node.tag)
        if kind is None:
            return
        if kind == "int" and len(node.value) > _MAX_INT_TEXT:
            raise self._limit("integer too large (limit: 64-bit)", event, _SMALLER)
        try:
            value = self.construct_object(node)  # cached: construct_document reuses it
        except (ValueError, KeyError, AttributeError):
            raise self._limit(
                f"{node.value[:40]!r} is not a valid {kind}", event, f"write a {kind} or quote it"
            ) from None
        if kind == "int" and not INT64_MIN <= value <= INT64_MAX:
            raise self._limit("integer too large (limit: 64-bit)", event, _SMALLER)

    def _field(self) -> str:
        return "".join(self._path).lstrip(".")

    def _limit(self, message: str, event: yaml.Event, fix: str) -> SpecError:
        return _error(self._field(), message, fix, event.start_mark)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r:.80}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
