"""Torch-stage surgery on one representation: the aten-level graph from torch.export.

``pytorch-export`` sources arrive as ``torch.export.load(...).module()``: a GraphModule
that calls ``aten.linear``/``aten.conv2d`` on plain parameters, with no ``nn.Linear``
left to find. User ``nn.Module``s are traced into the same form, so prune, lowRank and
distill find layers, follow data flow and resize parameters one way for both.

Structured shrinking is our own code rather than Torch-Pruning: that library walks
``nn.Module`` layers and autograd, and neither exists in an exported GraphModule,
while the aten graph makes the dependency rule we need (a layer feeding the next one
only through elementwise ops) a short walk over ``node.users``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import fx, nn

from modelpress.jobs.dataset import Samples, collate
from modelpress.jobs.export import export_dynamic_shapes, widen_dynamic_axes  # one rule for dynamic dims
from modelpress.jobs.methods import ModelHandle

M = TypeVar("M", bound=nn.Module)

aten = torch.ops.aten
LINEAR = aten.linear.default
CONVS = (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default)
# Ops that act on each unit independently: removing a unit before them removes the
# same unit after them. Batch norm also qualifies once its per-channel state is sliced.
ELEMENTWISE = {
    aten.relu.default,
    aten.relu_.default,
    aten.gelu.default,
    aten.silu.default,
    aten.tanh.default,
    aten.sigmoid.default,
    aten.hardtanh.default,
    aten.leaky_relu.default,
    aten.elu.default,
    aten.dropout.default,
    aten.clone.default,
    aten.hardswish.default,
    aten.mish.default,
}
BATCH_NORM = aten.batch_norm.default
EXPORT_SAMPLES = 8
BATCH_SIZE = 64

# (model output, input feeds, labels or None) -> loss: what ``fit`` minimises.
LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None], torch.Tensor]


def graph_module(handle: ModelHandle, train: Samples) -> fx.GraphModule:
    """A private aten-level copy of ``handle.module`` (the caller's model is never touched).

    A module loaded from torch.export is already in this form; anything else is traced
    with torch.export on a few training samples, keeping ``handle.dynamic_axes`` dynamic.
    """
    module = handle.module
    if module is None:
        raise ValueError("this step needs a torch model (pytorch-export or hf-transformers source)")
    if isinstance(module, fx.GraphModule) and any(
        isinstance(n.target, torch._ops.OpOverload) for n in module.graph.nodes
    ):
        return copy_module(module)
    if len(train) == 0:
        raise ValueError("tracing the model needs at least one training sample")
    sample = collate(train.features[:EXPORT_SAMPLES], train.pad_values)
    kwargs = {
        name: torch.from_numpy(
            np.ascontiguousarray(widen_dynamic_axes(sample[name], handle.dynamic_axes.get(name, {})))
        )
        for name in handle.input_names
    }
    was_training = module.training
    module.eval()
    try:
        program = torch.export.export(module, (), kwargs, dynamic_shapes=export_dynamic_shapes(handle))
    finally:
        module.train(was_training)
    return copy_module(program.module())  # the unlifted module shares tensors with ``module``


def copy_module(gm: fx.GraphModule) -> fx.GraphModule:
    with warnings.catch_warnings():
        # torch's own pytree specs warn about a deprecated isinstance check when copied.
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(gm)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- layers


def is_layer(node: fx.Node) -> bool:
    return node.op == "call_function" and (node.target is LINEAR or node.target in CONVS) and _is_attr(node.args[1])


def _is_attr(arg: object) -> bool:
    return isinstance(arg, fx.Node) and arg.op == "get_attr"


def layers(gm: fx.GraphModule, kinds: tuple[str, ...] = ("linear", "conv")) -> list[fx.Node]:
    want = ({LINEAR} if "linear" in kinds else set()) | (set(CONVS) if "conv" in kinds else set())
    return [n for n in gm.graph.nodes if is_layer(n) and n.target in want]


def node_arg(node: fx.Node, i: int) -> fx.Node:
    """``node.args[i]`` where the graph's shape makes it a node (a layer's weight, say)."""
    arg = node.args[i]
    if not isinstance(arg, fx.Node):
        raise TypeError(f"argument {i} of {node.name} is a {type(arg).__name__}, not a graph node")
    return arg


def attr_name(node: fx.Node) -> str:
    """The dotted attribute path a get_attr node reads, e.g. ``layers.0.weight``."""
    if node.op != "get_attr" or not isinstance(node.target, str):
        raise TypeError(f"{node.name} is a {node.op} node, not a get_attr")
    return node.target


def get_param(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    """The tensor behind a get_attr node."""
    owner, name = _owner(gm, attr_name(node))
    return getattr(owner, name)


def set_param(gm: fx.GraphModule, node: fx.Node, value: torch.Tensor) -> None:
    """Replace the tensor behind a get_attr node, keeping parameter vs buffer."""
    owner, name = _owner(gm, attr_name(node))
    old = getattr(owner, name)
    if isinstance(old, nn.Parameter):
        setattr(owner, name, nn.Parameter(value.detach().clone().contiguous(), requires_grad=old.requires_grad))
    else:
        owner.register_buffer(name, value.detach().clone().contiguous())


def _owner(gm: fx.GraphModule, target: str) -> tuple[nn.Module, str]:
    prefix, _, name = target.rpartition(".")
    return (gm.get_submodule(prefix) if prefix else gm), name


def weight_slots(gm: fx.GraphModule) -> list[tuple[nn.Module, str]]:
    """(owner module, attribute) of each Linear/Conv weight: what torch.nn.utils.prune takes."""
    return [_owner(gm, attr_name(node_arg(n, 1))) for n in layers(gm)]


# --------------------------------------------------------------------------- structured


@dataclass
class Pair:
    """``producer``'s output units feed ``consumer``'s input units through ``between``."""

    producer: fx.Node
    between: list[fx.Node]
    consumer: fx.Node


def prunable_pairs(gm: fx.GraphModule, kinds: tuple[str, ...]) -> list[Pair]:
    """Layer pairs whose shared units can be removed without touching anything else.

    The producer's output must reach exactly one consumer layer, as that layer's input,
    only through elementwise ops / batch norm, with no other reader on the way (a
    residual add or a reshape stops the walk). The model's output layer is never a
    producer, so output dimensions never change.
    """
    pairs = []
    for producer in layers(gm, kinds):
        if _groups(producer) != 1:
            continue
        between: list[fx.Node] = []
        node = producer
        while len(node.users) == 1:
            user = next(iter(node.users))
            if is_layer(user) and user.args[0] is node and user.target in _same_family(producer) and _groups(user) == 1:
                pairs.append(Pair(producer, between, user))
                break
            if not _passes_units(user, node):
                break
            between.append(user)
            node = user
    return pairs


def _same_family(node: fx.Node) -> set:
    return {LINEAR} if node.target is LINEAR else set(CONVS)


def _groups(node: fx.Node) -> int:
    groups = node.args[6] if node.target in CONVS and len(node.args) > 6 else 1
    if not isinstance(groups, int):
        raise TypeError(f"{node.name}: groups is a {type(groups).__name__}, not an int")
    return groups


def _passes_units(user: fx.Node, src: fx.Node) -> bool:
    if user.op != "call_function" or user.args[0] is not src:
        return False
    if user.target in ELEMENTWISE:
        return True
    return user.target is BATCH_NORM and all(a is None or _is_attr(a) for a in user.args[1:5])


def shrink_pairs(gm: fx.GraphModule, pairs: list[Pair], keep_fraction: float) -> dict[str, list[int]]:
    """Keep the ``keep_fraction`` most important output units of every pair's producer.

    Importance is the L2 norm of each unit's incoming weights (the producer's rows).
    Slices the producer's weight rows and bias, any batch-norm state in between and
    the consumer's input columns. Returns {producer weight name: [before, after]}.
    """
    widths: dict[str, list[int]] = {}
    for pair in pairs:
        weight_node, bias_node = node_arg(pair.producer, 1), _arg(pair.producer, 2)
        weight = get_param(gm, weight_node)
        n = weight.shape[0]
        keep_n = max(1, int(round(n * keep_fraction)))
        if keep_n >= n:
            continue
        rows = weight.detach().reshape(n, -1)
        score = rows.pow(2).sum(1)  # L2 importance of each unit
        keep = torch.sort(torch.topk(score, keep_n).indices).values
        set_param(gm, weight_node, weight.detach()[keep])
        if bias_node is not None:
            set_param(gm, bias_node, get_param(gm, bias_node).detach()[keep])
        for node in pair.between:
            if node.target is BATCH_NORM:
                for arg in node.args[1:5]:
                    if isinstance(arg, fx.Node):  # the state _passes_units found as get_attr nodes
                        set_param(gm, arg, get_param(gm, arg).detach()[keep])
        consumer_weight = node_arg(pair.consumer, 1)
        set_param(gm, consumer_weight, get_param(gm, consumer_weight).detach()[:, keep])
        widths[attr_name(weight_node)] = [n, keep_n]
    gm.recompile()
    return widths


def _arg(node: fx.Node, i: int) -> fx.Node | None:
    arg = node.args[i] if len(node.args) > i else None
    return arg if isinstance(arg, fx.Node) else None


# --------------------------------------------------------------------------- training


def fit(
    module: nn.Module,
    train: Samples,
    task: str,
    epochs: int,
    learning_rate: float,
    seed: int,
    loss_fn: LossFn | None = None,
    device: str = "cpu",
) -> None:
    """Seeded Adam training on ``train``; the default loss follows the task.

    classification: cross-entropy on labels; regression: MSE on labels; embedding (no
    labels to learn from): pass ``loss_fn`` (e.g. MSE to the original model's outputs).
    Exported GraphModules have their dropout/batch-norm mode fixed at export time, so
    no ``.train()`` switch is needed (they refuse it).
    """
    if epochs <= 0:
        return
    if loss_fn is None:
        if train.labels is None:
            raise ValueError(f"fine-tuning a {task} model needs labels (y) in the training data")
        loss_fn = _label_loss(task)
    torch.manual_seed(seed)
    module.to(device)
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=learning_rate)
    for epoch in range(epochs):
        shuffled, _ = train.split(1.0, seed=seed + epoch)
        for inputs, labels in shuffled.batches(BATCH_SIZE):
            feeds = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in inputs.items()}
            target = None if labels is None else torch.from_numpy(np.asarray(labels)).to(device)
            optimizer.zero_grad()
            loss = loss_fn(module(**feeds), feeds, target)
            loss.backward()
            optimizer.step()
    module.to("cpu")


def frozen(teacher: M) -> M:
    """``teacher`` with gradients off: it only provides targets."""
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def match_outputs(teacher: nn.Module) -> LossFn:
    """MSE to the teacher's outputs on the same batch: how a model without labels to learn
    from (an embedding model) is fine-tuned by prune or distilled."""

    def loss(out: torch.Tensor, feeds: dict[str, torch.Tensor], _labels: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(**feeds)
        return nn.functional.mse_loss(out, target)

    return loss


def _labelled(labels: torch.Tensor | None) -> torch.Tensor:
    """The labels a label loss needs (it is chosen only for data that has them)."""
    if labels is None:
        raise ValueError("this loss needs labels (y) in the training data")
    return labels


def _label_loss(task: str) -> LossFn:
    if task == "classification":
        return lambda out, _feeds, y: nn.functional.cross_entropy(out, _labelled(y).long())
    if task == "regression":
        return lambda out, _feeds, y: nn.functional.mse_loss(out, _labelled(y).to(out.dtype).reshape(out.shape))
    raise ValueError(f"task {task!r} has no label loss; fine-tuning it needs a teacher (distill) instead")
