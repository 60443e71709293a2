"""Whose fault is it when the source model fails to run: the model's or the data's?

onnxruntime names the failing node (``... running ConstantOfShape node. Name:'bomb' Status
Message: ...``). A node that does not depend on any graph input fails whatever data it is
given — a 4 TiB ``ConstantOfShape`` that constant folding skipped, say — so the user must
fix the model (``source.storageUri``), not ``validation.dataset``. Anything else keeps the
data in the frame: the same model may well run on other inputs.
"""

from __future__ import annotations

import re

import onnx

_FAILING_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")


def data_independent_failure(model: onnx.ModelProto, message: str) -> tuple[str, str] | None:
    """(node name, op type) when ``message`` is onnxruntime's failure of a node that no graph
    input reaches; None when the data may be at fault (or the node cannot be found)."""
    m = _FAILING_NODE.search(message)
    if not m:
        return None
    op_type, name = m.groups()
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output if out}
    target = next((node for node in graph.node if node.name == name), None)
    if target is None:
        return None
    inputs = {i.name for i in graph.input} - {init.name for init in graph.initializer}
    seen: set[str] = set()
    todo = [target]
    while todo:  # walk back from the failing node: does any path reach a graph input?
        node = todo.pop()
        for tensor in [*node.input, *_captured(node)]:
            if tensor in inputs:
                return None
            producer = producers.get(tensor)
            if producer is not None and tensor not in seen:
                seen.add(tensor)
                todo.append(producer)
    return name, op_type


def _captured(node: onnx.NodeProto) -> list[str]:
    """Outer-scope tensors a Loop/If/Scan body reads (they are not listed as node inputs)."""
    names: list[str] = []
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            local = {i.name for i in sub.input} | {o for n in sub.node for o in n.output}
            local |= {init.name for init in sub.initializer}
            names += [t for n in sub.node for t in n.input if t and t not in local]
            names += [t for n in sub.node for t in _captured(n) if t not in local]
    return names
