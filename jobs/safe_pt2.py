"""A clean copy of a hostile ``.pt2`` (torch.export archive) that torch may then load.

``torch.export.load`` trusts its archive: it ``sympy.sympify``s the symbolic-shape
strings of ``models/model.json`` (Python evaluation), ``exec``s its ``guards_code``
into a guard that runs on every forward call, resolves node targets by ``getattr``
chains from ``torch``/``operator`` (``torch.os.system`` is callable), imports modules
named in tree specs, unpickles ``use_pickle`` payloads and sample inputs (falling back
to ``weights_only=False``), and runs AOTInductor shared objects. Its zip reader takes
the *first* of two entries with the same name where Python's takes the last, so a
check with :mod:`zipfile` alone can be shown one file while torch loads another.

So torch never sees the user's file. :func:`clean_copy` reads the archive with
:mod:`zipfile`, refuses duplicate names and every entry kind ``torch.export.save``
does not write (derived from what torch 2.13 writes: the model JSON, weight and
constant payloads with their configs, sample inputs and archive metadata), refuses
pickles, checks every expression string against the small grammar torch's printer
(``sympy.srepr``) produces, every node target against the operator namespaces an
exported graph uses and every tree spec against plain containers, keeps of
``guards_code`` only guards in the grammar torch's Python printer writes (re-printed
from the parsed tree; others are dropped with a log line), drops the sample inputs (a
pickle, unused for loading), and writes the validated entries into a new archive with
torch's own writer. Only that copy is handed to torch, whose
``weights_only`` unpickler stays on as a second layer (see ``models.load_pt2``).

The checks are hand-written because no library validates this format: torch's own
schema check (``_dict_to_dataclass``) verifies the field types, not what the strings in
them make torch do.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from modelpress.jobs.errors import JobInputError, first_line

log = logging.getLogger(__name__)

# Resource bounds for one archive: entries, bytes written to the clean copy, bytes of one
# JSON document parsed into memory (model.json of a large transformer is tens of MB).
MAX_ENTRIES = 100_000
MAX_TOTAL_BYTES = 32 * 2**30
MAX_JSON_BYTES = 256 * 2**20
MAX_METADATA_BYTES = 1024
MAX_EXPR_CHARS = 10_000
MAX_EXPR_NODES = 2_000
MAX_INT = 2**63  # shapes and strides are int64
MAX_FLOAT_PRECISION = 113  # bits (quad); mpmath would work at any precision asked
MAX_EXPONENT = 64  # sympy evaluates integer powers eagerly: Pow(10, 10**9) would never finish

PICKLE_HINT = (
    "ModelPress never unpickles models (a pickle can run arbitrary code): export it with "
    "torch.export.save (.pt2, source.format pytorch-export) or to ONNX (source.format onnx)"
)
MODEL = "model"  # the one program torch.export.save writes and torch.export.load returns
MODEL_JSON = f"models/{MODEL}.json"
WEIGHTS_CONFIG = f"data/weights/{MODEL}_weights_config.json"
CONSTANTS_CONFIG = f"data/constants/{MODEL}_constants_config.json"
SAMPLE_INPUTS = f"data/sample_inputs/{MODEL}.pt"
METADATA = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
PAYLOAD = re.compile(r"data/(weights/weight|constants/tensor)_\d+")
ROOT = re.compile(r"[A-Za-z0-9_.-]+")

# sympy classes as sympy.srepr writes them, plus the functions torch's deserializer puts in
# sympify's namespace (torch/_export/serde/serialize.py, GraphModuleDeserializer.deserialize).
SYMPY_CALLS = frozenset(
    {
        *("Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs"),
        *("floor", "ceiling", "Eq", "Ne", "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan"),
        *("And", "Or", "Not"),
        *("FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv"),
        *("LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "TruncToFloat"),
        *("TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "IsNonOverlappingAndDenseIndicator"),
    }
)
POWERS = frozenset({"Pow", "PowByNatural", "FloatPow", "LShift"})
SYMPY_NAMES = frozenset({"true", "false"})
ASSUMPTIONS = frozenset(
    {"integer", "real", "positive", "negative", "nonnegative", "nonpositive", "finite", "zero", "nonzero"}
)
SYMBOL = re.compile(r"[a-z]{1,8}\d{1,6}")  # torch's symbol names: s0, u3, zuf0 (the number bounds a counter loop)
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

# Node targets: operator overloads of these namespaces, and the Python-level symbolic
# ops torch's deserializer itself knows (its _SYM_OPS) plus getitem for multi-output ops.
OP_TARGET = re.compile(r"torch\.ops\.(aten|prims|quantized_decomposed)\.(?!__)\w+\.(?!__)\w+")
HIGHER_ORDER = frozenset({"cond", "while_loop", "map_impl", "scan", "wrap_with_set_grad_enabled", "wrap_with_autocast"})
PLAIN_TARGETS = frozenset(
    {
        *(f"_operator.{op}" for op in ("getitem", "eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add")),
        *(f"_operator.{op}" for op in ("sub", "floordiv", "mod", "pow", "truediv", "and_", "or_", "lshift", "rshift")),
        "math.trunc",
        *(f"torch.sym_{op}" for op in ("not", "int", "float", "ite", "max", "min", "sqrt")),
    }
)
# Tree spec node types that are plain containers (collections.defaultdict imports a module
# named in the file; enums in a context do too).
TREESPEC_TYPES = frozenset(
    {
        None,
        "builtins.tuple",
        "builtins.list",
        "builtins.dict",
        "collections.OrderedDict",
        "torch.fx.immutable_collections.immutable_dict",
        "torch.fx.immutable_collections.immutable_list",
    }
)


def clean_copy(path: Path, dest: Path, field: str) -> Path:
    """Validate the archive at ``path`` and write its clean copy to ``dest`` (a .pt2 path).

    Raises :class:`JobInputError` naming ``field`` for anything torch.export.save would
    not have written or that would make torch run code.
    """
    check = _Checker(path.name, field)
    if not zipfile.is_zipfile(path):
        raise check.refuse("is not a torch.export archive (.pt2 is a zip file)")
    try:
        with zipfile.ZipFile(path) as z:
            entries = check.entries(z)
            program = check.program(entries.pop(MODEL_JSON))
            weights = check.payload_config(entries, WEIGHTS_CONFIG, "weight_")
            constants = check.payload_config(entries, CONSTANTS_CONFIG, "tensor_")
            _write(dest, program, weights, constants, lambda rel: z.read(entries[rel]))
    except (zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error) as e:
        raise check.refuse(f"is not a readable zip archive ({first_line(e, 120)})") from e
    except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as e:  # JSON of the wrong shape
        raise check.refuse(f"has a malformed {MODEL_JSON} or payload config ({type(e).__name__})") from e
    return dest


class _Checker:
    """The checks of one archive; every refusal names the file and the spec field."""

    def __init__(self, name: str, field: str) -> None:
        self.name = name
        self.field = field

    def refuse(self, what: str) -> JobInputError:
        return JobInputError(self.field, f"{self.name} {what}; save the model with torch.export.save")

    # ----------------------------------------------------------------- the zip

    def entries(self, z: zipfile.ZipFile) -> dict[str, Any]:
        """Relative entry name -> bytes (the JSON documents) or ZipInfo (payloads, read when
        copied); the metadata entries are checked and dropped (torch's writer writes its own)."""
        infos = z.infolist()
        if len(infos) > MAX_ENTRIES:
            raise self.refuse(f"has {len(infos)} entries (limit {MAX_ENTRIES})")
        names = [i.filename for i in infos]
        duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
        if duplicates:  # zip readers disagree on which one counts: refuse rather than guess
            raise self.refuse(f"has two zip entries named {duplicates[0]!r}")
        if sum(i.file_size for i in infos) > MAX_TOTAL_BYTES:
            raise self.refuse(f"unpacks to more than {MAX_TOTAL_BYTES // 2**30} GiB")
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or not ROOT.fullmatch(next(iter(roots))) or any("/" not in n for n in names):
            raise self.refuse("does not have the one top-level folder a torch.export archive has")
        root = next(iter(roots)) + "/"
        out: dict[str, Any] = {}
        for info in infos:
            rel = info.filename[len(root) :]
            if info.is_dir() or info.flag_bits & 0x1:  # folders, encrypted entries
                raise self.refuse(f"holds an entry torch.export.save does not write ({info.filename!r})")
            if rel in METADATA and info.file_size <= MAX_METADATA_BYTES:
                self._metadata(rel, z.read(info))
            elif rel == SAMPLE_INPUTS or rel.startswith("extra/"):
                log.info("%s: dropping %s (example inputs are a pickle; extra files are not used)", self.name, rel)
            elif rel in (MODEL_JSON, WEIGHTS_CONFIG, CONSTANTS_CONFIG):
                if info.file_size > MAX_JSON_BYTES:
                    raise self.refuse(f"has a {info.file_size}-byte {rel} (limit {MAX_JSON_BYTES})")
                out[rel] = z.read(info)
            elif PAYLOAD.fullmatch(rel):
                out[rel] = info
            else:
                what = "AOTInductor compiled code" if rel.startswith("data/aotinductor/") else "an entry"
                raise self.refuse(f"holds {what} torch.export.save does not write ({info.filename!r})")
        if MODEL_JSON not in out:
            raise self.refuse(f"has no {MODEL_JSON}")
        return out

    def _metadata(self, rel: str, data: bytes) -> None:
        from torch.export.pt2_archive import constants as pt2

        text = data.decode("utf-8", "replace").strip()
        expected = {
            "archive_format": pt2.ARCHIVE_FORMAT_VALUE,
            "archive_version": pt2.ARCHIVE_VERSION_VALUE,
            "byteorder": sys.byteorder,  # payloads are raw bytes in the writer's byte order
        }.get(rel)
        if expected is not None and text != expected:
            raise self.refuse(f"has {rel} {text[:20]!r}, this loader reads {expected!r}")

    # ----------------------------------------------------------------- model.json

    def program(self, data: bytes) -> dict[str, Any]:
        """The parsed model.json, checked; guards_code only as far as it fits the guard grammar."""
        doc = self._json(data, MODEL_JSON)
        doc["guards_code"] = self._guards(doc.get("guards_code") or [])
        graph_module = doc.get("graph_module")
        if not isinstance(graph_module, dict):
            raise self.refuse(f"has no graph_module in {MODEL_JSON}")
        for name, bounds in (doc.get("range_constraints") or {}).items():
            self._symbol_name(name)
            for value in (bounds or {}).values():
                if value is not None and (not isinstance(value, int) or abs(value) > MAX_INT):
                    raise self.refuse(f"has a range constraint for {name} that is not an int64 ({str(value)[:40]})")
        self._walk(doc)
        for entry in graph_module.get("module_call_graph") or []:
            signature = entry.get("signature") or {}
            for key in ("in_spec", "out_spec"):
                if key in signature:
                    self._treespec(signature[key])
        return doc

    def _walk(self, value: Any) -> None:
        """Check every expression string, node target and operator argument, at any depth
        (subgraphs of control-flow ops nest whole graphs)."""
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
                continue
            if not isinstance(item, dict):
                continue
            for key, child in item.items():
                if key == "expr_str":
                    self._expression(child)
                elif key == "as_operator":
                    self._target(child)
                elif key == "nodes" and isinstance(child, list):
                    for node in child:
                        self._target(node.get("target") if isinstance(node, dict) else None)
                elif key in ("as_custom_obj", "custom_obj_values") and child:
                    raise self.refuse("holds a custom object (a pickle)")
                stack.append(child)

    def _target(self, target: Any) -> None:
        ok = isinstance(target, str) and (
            target in PLAIN_TARGETS
            or OP_TARGET.fullmatch(target) is not None
            or (target.startswith("torch.ops.higher_order.") and target.split(".")[-1] in HIGHER_ORDER)
        )
        if not ok:
            raise self.refuse(f"calls {str(target)[:80]!r}, which is not a torch operator")

    def _symbol_name(self, name: Any) -> None:
        if not isinstance(name, str) or not SYMBOL.fullmatch(name):
            raise self.refuse(f"has a symbol named {str(name)[:40]!r} (torch names symbols like s0, u3)")

    def _expression(self, text: Any) -> None:
        """Accept only what sympy.srepr writes for shape expressions: calls of known sympy
        classes on literals and symbols. Parsed with Python's parser, which evaluates nothing."""
        if not isinstance(text, str) or len(text) > MAX_EXPR_CHARS:
            raise self.refuse(f"has a symbolic shape expression that is not a string of at most {MAX_EXPR_CHARS} chars")
        try:
            tree = ast.parse(text, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
            raise self.refuse(f"has a symbolic shape expression that does not parse ({text[:60]!r})") from e
        nodes = list(ast.walk(tree))
        if len(nodes) > MAX_EXPR_NODES:
            raise self.refuse(f"has a symbolic shape expression with over {MAX_EXPR_NODES} terms")
        try:
            self._expr_node(tree.body)
        except _BadExpression as e:
            raise self.refuse(f"has a symbolic shape expression torch does not write ({e}: {text[:60]!r})") from None

    def _expr_node(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name) and node.id in SYMPY_NAMES:
            return
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.func.id not in SYMPY_CALLS:
            raise _BadExpression(type(node).__name__ if not isinstance(node, ast.Call) else ast.unparse(node.func))
        name = node.func.id
        if name == "Symbol":
            self._symbol_call(node)
        elif name == "Float":
            _only(node, 1, {"precision"})
            text = _str_value(node.args[0])
            if text is None or not FLOAT_TEXT.fullmatch(text):
                raise _BadExpression("Float of a non-number")
            if any(kw.value.value > MAX_FLOAT_PRECISION for kw in node.keywords):  # type: ignore[attr-defined]
                raise _BadExpression(f"Float precision above {MAX_FLOAT_PRECISION} bits")
        elif name in ("Integer", "Rational"):
            _only(node, 1 if name == "Integer" else 2, set())
            for arg in node.args:
                _literal_int(arg)
        else:
            _only(node, None, set())
            if name in POWERS and (len(node.args) != 2 or abs(_exponent(node.args[1])) > MAX_EXPONENT):
                raise _BadExpression(f"{name} needs a literal exponent of at most {MAX_EXPONENT}")
            for arg in node.args:
                self._expr_node(arg)

    def _symbol_call(self, node: ast.Call) -> None:
        _only(node, 1, ASSUMPTIONS)
        symbol = _str_value(node.args[0])
        if symbol is None:
            raise _BadExpression("Symbol name is not a string")
        if not SYMBOL.fullmatch(symbol):
            raise _BadExpression(f"symbol name {symbol[:40]!r}")

    def _guards(self, guards: Any) -> list[str]:
        """The guards that fit :func:`_guard_node`'s grammar, re-printed from the parsed tree;
        the others are dropped with a log line.

        torch ``exec``s each guard into a function that runs on every forward call, so
        arbitrary text is code execution; but a guard is also how a program says "my graph
        is only right for these shapes" (e.g. ``max(1, n - 2) != 1``), so well-formed ones
        are kept rather than silently losing that check.
        """
        if not isinstance(guards, list):
            raise self.refuse("has a guards_code that is not a list of strings")
        kept = []
        for text in guards:
            try:
                if not isinstance(text, str) or len(text) > MAX_EXPR_CHARS:
                    raise _BadExpression("not a short string")
                tree = ast.parse(text, mode="eval")
                if sum(1 for _ in ast.walk(tree)) > MAX_EXPR_NODES:
                    raise _BadExpression("too long")
                _guard_node(tree.body)
            except (_BadExpression, SyntaxError, ValueError, RecursionError, MemoryError) as e:
                log.warning("%s: dropped a guard torch does not write (%s): %.80r", self.name, e, text)
                continue
            kept.append(ast.unparse(tree))
        return kept

    def _treespec(self, text: Any) -> None:
        """A pytree spec: plain containers only (see TREESPEC_TYPES), contexts plain JSON."""
        try:
            protocol, spec = json.loads(text)
        except (TypeError, ValueError) as e:
            raise self.refuse("has an input/output tree spec that is not JSON") from e
        stack = [spec]
        while stack:
            node = stack.pop()
            if not isinstance(node, dict) or node.get("type") not in TREESPEC_TYPES:
                kind = node.get("type") if isinstance(node, dict) else node
                raise self.refuse(f"has inputs/outputs of type {str(kind)[:60]!r} (plain tuples, lists and dicts only)")
            context = json.loads(node["context"]) if isinstance(node.get("context"), str) else node.get("context")
            if not _plain(context):
                raise self.refuse("has an input/output tree spec whose context is not plain names")
            stack.extend(node.get("children_spec") or [])

    # ----------------------------------------------------------------- payloads

    def payload_config(self, entries: dict[str, Any], config_name: str, prefix: str) -> dict[str, Any]:
        """The weights/constants config, checked: no pickles, every payload named as torch names it and present."""
        data = entries.pop(config_name, None)
        if data is None:
            raise self.refuse(f"has no {config_name}")
        doc = self._json(data, config_name)
        folder = config_name.rsplit("/", 1)[0] + "/"
        for fqn, meta in (doc.get("config") or {}).items():
            if not isinstance(meta, dict):
                raise self.refuse(f"has a malformed {config_name}")
            path_name = meta.get("path_name")
            if meta.get("use_pickle") or not isinstance(path_name, str) or not path_name.startswith(prefix):
                raise JobInputError(self.field, f"{self.name} holds a pickled object ({fqn}); {PICKLE_HINT}")
            if folder + path_name not in entries:
                raise self.refuse(f"names a payload {path_name!r} for {fqn} that the archive does not hold")
        return doc

    def _json(self, data: bytes, name: str) -> dict[str, Any]:
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise self.refuse(f"has a {name} that is not valid JSON") from e
        if not isinstance(doc, dict):
            raise self.refuse(f"has a {name} that is not a JSON object")
        return doc


class _BadExpression(Exception):
    """What in an expression is outside the grammar (caught and reported by _Checker)."""


def _only(node: ast.Call, nargs: int | None, keywords: AbstractSet[str]) -> None:
    """``node`` has ``nargs`` positional arguments (any number for None) and only the
    given keywords, each a literal bool or int (sympy's assumptions and Float precision)."""
    if (nargs is not None and len(node.args) != nargs) or any(k.arg not in keywords for k in node.keywords):
        raise _BadExpression(f"unexpected arguments to {ast.unparse(node.func)}")
    for kw in node.keywords:
        if not (isinstance(kw.value, ast.Constant) and type(kw.value.value) in (bool, int)):
            raise _BadExpression(f"keyword {kw.arg} is not a literal")
    if any(isinstance(a, ast.Starred) for a in node.args):
        raise _BadExpression("starred argument")


def _str_value(node: ast.AST) -> str | None:
    """The text of a string literal; None for any other node."""
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _exponent(node: ast.AST) -> int:
    """A literal exponent, as srepr writes it (Integer(2)) or bare."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Integer" and node.args:
        node = node.args[0]
    return _literal_int(node)


def _literal_int(node: ast.AST) -> int:
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1, node.operand
    if not (isinstance(node, ast.Constant) and type(node.value) is int) or node.value > MAX_INT:
        raise _BadExpression("not an int64 literal")
    return sign * node.value


def _plain(value: Any) -> bool:
    """JSON scalars and lists of them (dict keys); no objects, which is where enums hide."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


GUARD_CALLS = frozenset({"max", "min", "abs", "int", "float", "round"})
MATH_CALLS = frozenset({"floor", "ceil", "trunc", "sqrt"})
GUARD_OPS = (
    ast.And,
    ast.Or,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.FloorDiv,
    ast.Mod,
    ast.Div,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
)


def _guard_node(node: ast.AST) -> None:
    """What torch's Python printer writes for shape guards: arithmetic, comparisons and
    boolean logic over literals, ``max``/``min``/``math.floor``-like calls and input sizes
    ``L['x'].size()[0]`` / ``.stride()[i]`` / ``.storage_offset()``."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        if type(node.value) is int and abs(node.value) > MAX_INT:
            raise _BadExpression("integer out of int64 range")
        return
    if isinstance(node, ast.BoolOp) and isinstance(node.op, GUARD_OPS):
        return _guard_nodes(node.values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, GUARD_OPS):
        return _guard_node(node.operand)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        if abs(_literal_int(node.right)) > MAX_EXPONENT:
            raise _BadExpression(f"exponent above {MAX_EXPONENT}")
        return _guard_node(node.left)
    if isinstance(node, ast.BinOp) and isinstance(node.op, GUARD_OPS):
        return _guard_nodes([node.left, node.right])
    if isinstance(node, ast.Compare) and all(isinstance(op, GUARD_OPS) for op in node.ops):
        return _guard_nodes([node.left, *node.comparators])
    if isinstance(node, ast.Call) and not node.keywords:
        func = node.func
        if isinstance(func, ast.Name) and func.id in GUARD_CALLS:
            return _guard_nodes(node.args)
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if func.value.id == "math" and func.attr in MATH_CALLS:
                return _guard_nodes(node.args)
        if _input_attribute(func, "storage_offset") and not node.args:
            return None
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call) and not node.value.args:
        if _input_attribute(node.value.func, "size", "stride"):
            _literal_int(node.slice)
            return None
    raise _BadExpression(f"{type(node).__name__} is outside the guard grammar")


def _guard_nodes(nodes: list[ast.expr]) -> None:
    for child in nodes:
        if isinstance(child, ast.Starred):
            raise _BadExpression("starred argument")
        _guard_node(child)


def _input_attribute(node: ast.AST, *attrs: str) -> bool:
    """``L['x'].<attr>`` (or ``L['x']['k'].<attr>`` for nested inputs) with identifier keys."""
    if not (isinstance(node, ast.Attribute) and node.attr in attrs):
        return False
    value = node.value
    while isinstance(value, ast.Subscript):
        key = value.slice
        if not (isinstance(key, ast.Constant) and (type(key.value) is int or IDENTIFIER.fullmatch(str(key.value)))):
            return False
        value = value.value
    return isinstance(value, ast.Name) and value.id == "L" and value is not node.value


def _write(
    dest: Path,
    program: dict[str, Any],
    weights: dict[str, Any],
    constants: dict[str, Any],
    read: Callable[[str], bytes],
) -> None:
    """The clean archive, by torch's own writer (its record alignment and metadata), with
    the payloads the configs name and empty sample inputs (torch then keeps none)."""
    from torch.export.pt2_archive._package import PT2ArchiveWriter

    dest.parent.mkdir(parents=True, exist_ok=True)
    with PT2ArchiveWriter(str(dest)) as out:
        out.write_bytes(MODEL_JSON, json.dumps(program).encode())
        out.write_bytes(WEIGHTS_CONFIG, json.dumps(weights).encode())
        out.write_bytes(CONSTANTS_CONFIG, json.dumps(constants).encode())
        out.write_bytes(SAMPLE_INPUTS, b"")
        for folder, doc in (("data/weights/", weights), ("data/constants/", constants)):
            for name in sorted({meta["path_name"] for meta in (doc.get("config") or {}).values()}):
                out.write_bytes(folder + name, read(folder + name))
