"""Mutants of named functions in one Python source: small deliberate bugs, one at a time.

Hand-written rather than mutmut or cosmic-ray: both run the tests against the installed
package, and ours is a setuptools *strict* editable link tree (``operator/`` and ``jobs/``
become ``modelpress.operator`` / ``modelpress.jobs`` through symlinks under ``build/``),
which they cannot map back to the files they mutate; and both would mutate a whole file
where only the decision functions matter. An AST walk over the named functions and a
text splice of one node is under 200 lines and leaves the rest of the file byte-for-byte.

Operators (the usual ones): a comparison moved to its boundary or its negation
(``<`` -> ``<=``, ``>=``), ``is``/``in`` negated, ``and``/``or`` swapped, ``not`` removed,
unary minus removed, arithmetic swapped, numbers changed (+1, -1, 0), booleans flipped,
a returned value replaced by ``None``, and a simple statement deleted (``pass``).
Strings and f-strings (message wording, not decisions), annotations and signature
defaults are left alone.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterator
from dataclasses import dataclass

COMPARE_SWAPS: dict[type[ast.cmpop], tuple[type[ast.cmpop], ...]] = {
    ast.Lt: (ast.LtE, ast.GtE),
    ast.LtE: (ast.Lt, ast.Gt),
    ast.Gt: (ast.GtE, ast.LtE),
    ast.GtE: (ast.Gt, ast.Lt),
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
}
BINOP_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
}
DELETABLE = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Raise, ast.Continue, ast.Break)


@dataclass(frozen=True)
class Mutant:
    """One changed node: where, in which target, what it was and what it became."""

    target: str  # function (``Class.method``) or module-level name
    line: int
    original: str  # ast.unparse of the node before ...
    mutated: str  # ... and after: stable ids, independent of the file's formatting
    source: str  # the whole file with this one change

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.target, self.original, self.mutated)


def find_targets(tree: ast.Module, names: list[str]) -> dict[str, ast.AST]:
    """The function, method (``Class.method``) or module-level assignment for each name."""
    found: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    found[f"{node.name}.{item.name}"] = item
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Name):
                    found[t.id] = node
    missing = [n for n in names if n not in found]
    if missing:
        raise KeyError(f"not found in the module: {', '.join(missing)}")
    return {n: found[n] for n in names}


def _mutations(node: ast.AST) -> Iterator[tuple[ast.AST | str, bool]]:
    """(replacement node or statement text, is_statement) for every mutation of ``node`` itself."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for swap in COMPARE_SWAPS.get(type(op), ()):
                new = copy.deepcopy(node)
                new.ops[i] = swap()
                yield new, False
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield new, False
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        yield copy.deepcopy(node.operand), False
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
        new = copy.deepcopy(node)
        new.op = BINOP_SWAPS[type(node.op)]()
        yield new, False
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield ast.Constant(not node.value), False
    elif isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        v = node.value
        values = [v + 1, v - 1, 0] if isinstance(v, int) else [v + 1, 0.0]
        for value in dict.fromkeys(values):
            if value != v:
                yield ast.Constant(value), False
    elif isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):
            yield "return None", True
    if isinstance(node, DELETABLE) and not _is_docstring(node):
        yield "pass", True


def _is_docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Nodes to mutate: everything below ``node`` except f-strings, annotations and a
    function's signature (its defaults are configuration, not decisions)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        for stmt in node.body:
            yield from _walk(stmt)
        return
    if isinstance(node, ast.JoinedStr):
        return
    yield node
    for name, value in ast.iter_fields(node):
        if name in ("annotation", "returns", "decorator_list"):
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, ast.AST):
                yield from _walk(child)


def _splice(lines: list[bytes], node: ast.AST, text: str) -> str:
    """The source with ``node``'s extent replaced by ``text`` (offsets are UTF-8 bytes)."""
    start, end = node.lineno - 1, node.end_lineno - 1
    head = b"".join(lines[:start]) + lines[start][: node.col_offset]
    tail = lines[end][node.end_col_offset :] + b"".join(lines[end + 1 :])
    return (head + text.encode() + tail).decode()


def mutants(source: str, names: list[str]) -> list[Mutant]:
    """Every mutant of the named targets in ``source``, in file order, without duplicates."""
    tree = ast.parse(source)
    lines = source.encode().splitlines(keepends=True)
    out: dict[str, Mutant] = {}
    for name, target in find_targets(tree, names).items():
        for node in _walk(target):
            for replacement, is_statement in _mutations(node):
                if is_statement:
                    mutated, text = str(replacement), str(replacement)
                else:
                    mutated = ast.unparse(replacement)
                    text = f"({mutated})"
                new_source = _splice(lines, node, text)
                try:
                    compile(new_source, "<mutant>", "exec")
                except SyntaxError:  # e.g. `pass` where an expression statement was the only value
                    continue
                original = ast.unparse(node)
                out.setdefault(new_source, Mutant(name, node.lineno, original, mutated, new_source))
    return sorted(out.values(), key=lambda m: (m.line, m.original, m.mutated))
