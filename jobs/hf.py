"""Load a local Hugging Face transformers directory as a :class:`ModelHandle`.

The source format ``hf-transformers`` is a directory with ``config.json`` and
safetensors weights (what ``save_pretrained`` writes, e.g. all-MiniLM-L6-v2). We only
ever read safetensors: a ``pytorch_model.bin`` is a pickle and unpickling an untrusted
file runs arbitrary code, so such a directory is refused with the fix in the message.

For ``embedding`` the module reproduces sentence-transformers' pipeline from the
directory's own ``modules.json`` / ``1_Pooling/config.json`` (token pooling, then L2
normalisation when a Normalize module is listed), so the exported ONNX graph emits the
same sentence embeddings that ``SentenceTransformer.encode`` returns and fidelity can be
measured against them. We re-implement the two small pooling steps instead of wrapping
``SentenceTransformer`` itself because its modules take and return dicts, which
``torch.onnx.export`` cannot trace into a graph with named tensor inputs.

``to_fused_onnx`` is the fast export for these encoders: ONNX Runtime's transformer
fusions (one Attention kernel per layer, fused LayerNorms), which dynamic int8 then
turns into QAttention; see benchmarks/compress_minilm.py for what it buys.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from modelpress.jobs.errors import JobInputError, first_line
from modelpress.jobs.methods import ModelHandle

if TYPE_CHECKING:
    import onnx

# sentence-transformers' own name; also, torch's ONNX exporter names the aten.embedding
# value "embedding", so an output of that name would collide with it.
EMBEDDING_OUTPUT = "sentence_embedding"
SOURCE_FIELD = "source.storageUri"
LOGITS_OUTPUT = "logits"
POOLING_MODES = ("mean_tokens", "cls_token", "max_tokens", "mean_sqrt_len_tokens")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")

log = logging.getLogger(__name__)


class SentenceEmbedder(nn.Module):
    """Transformer -> token pooling -> optional L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, encoder: nn.Module, pooling: str, normalize: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        tokens = self.encoder(**encoder_inputs(input_ids, attention_mask, token_type_ids)).last_hidden_state
        embedding = pool(tokens, attention_mask, self.pooling)
        if self.normalize:
            embedding = nn.functional.normalize(embedding, p=2.0, dim=1)
        return embedding


class SequenceClassifier(nn.Module):
    """AutoModelForSequenceClassification returning the bare logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(**encoder_inputs(input_ids, attention_mask, token_type_ids)).logits


def encoder_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Keyword inputs for a transformers model; token_type_ids only when the model uses them."""
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        inputs["token_type_ids"] = token_type_ids
    return inputs


def pool(tokens: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token vectors [B, T, H] into sentence vectors [B, H], ignoring padding."""
    mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
    if mode == "cls_token":
        return tokens[:, 0]
    if mode == "max_tokens":
        return tokens.masked_fill(mask == 0, -1e9).max(dim=1).values
    summed = (tokens * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    if mode == "mean_sqrt_len_tokens":
        return summed / counts.sqrt()
    return summed / counts


def load_hf_model(path: Path, task: str) -> ModelHandle:
    """A torch-stage handle for a local transformers directory.

    ``task`` ``embedding`` gives output ``sentence_embedding`` [batch, hidden]; ``classification``
    and ``regression`` give ``logits`` from AutoModelForSequenceClassification. Inputs are
    the tokenizer's model inputs with dynamic batch and sequence axes.
    """
    if task not in ("embedding", "classification", "regression"):
        raise JobInputError(
            "source.task", f"{task!r} is not supported for hf-transformers; use embedding or classification"
        )
    path = Path(path)
    check_directory(path)
    from transformers import AutoModel, AutoModelForSequenceClassification

    input_names = model_input_names(path)
    # Eager attention exports to plain MatMul/Softmax nodes, which ORT fuses and quantizes
    # predictably; SDPA traces into a decomposition that differs by torch version.
    kwargs = {"local_files_only": True, "use_safetensors": True, "attn_implementation": "eager"}
    try:
        if task == "embedding":
            pooling, normalize = sentence_transformer_head(path)
            module: nn.Module = SentenceEmbedder(AutoModel.from_pretrained(path, **kwargs), pooling, normalize)
            outputs = [EMBEDDING_OUTPUT]
        else:
            module = SequenceClassifier(AutoModelForSequenceClassification.from_pretrained(path, **kwargs))
            outputs = [LOGITS_OUTPUT]
    except (OSError, ValueError, KeyError) as err:  # transformers' ways of saying "not a model I know"
        raise JobInputError(
            SOURCE_FIELD, f"transformers could not load the model in {path}: {first_line(err, 200)}"
        ) from err
    module.eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes[outputs[0]] = {0: "batch"}
    return ModelHandle(input_names=input_names, output_names=outputs, module=module, dynamic_axes=axes)


def check_directory(path: Path) -> None:
    """Refuse anything but a directory with config.json and safetensors weights."""
    if not path.is_dir():
        raise JobInputError(
            SOURCE_FIELD,
            f"{path} is not a directory: format hf-transformers expects a directory "
            "with config.json and *.safetensors (what save_pretrained writes)",
        )
    if not (path / "config.json").is_file():
        raise JobInputError(SOURCE_FIELD, f"{path} has no config.json: is it a transformers model directory?")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = [name for name in PICKLE_WEIGHTS if (path / name).exists()]
        found = (
            f" (found {', '.join(pickles)}: pickled weights are refused, they can run code when loaded)"
            if pickles
            else ""
        )
        raise JobInputError(
            SOURCE_FIELD,
            f"{path} has no *.safetensors weights{found}; convert with "
            "model.save_pretrained(dir, safe_serialization=True)",
        )
    for file in weights:  # transformers would raise SafetensorError (no ValueError/OSError) mid-load
        check_safetensors(file)


def check_safetensors(file: Path) -> None:
    """Refuse a safetensors file whose header does not parse or does not fit the file
    (the library checks both when it opens the file; the tensors are not read here)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt"):
            pass
    except SafetensorError as err:
        raise JobInputError(
            SOURCE_FIELD, f"{file} is not a valid safetensors file ({first_line(err, 160)}); re-save the model"
        ) from err


def model_input_names(path: Path, tokenizer=None) -> list[str]:
    """The tokenizer's model inputs (input_ids, attention_mask, token_type_ids when used)."""
    from transformers import AutoConfig

    names = list((tokenizer or load_tokenizer(path)).model_input_names)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if "token_type_ids" in names and getattr(config, "type_vocab_size", 1) <= 1:
        names.remove("token_type_ids")  # the model has a single segment: the input would be constant
    for required in ("input_ids", "attention_mask"):
        if required not in names:
            raise JobInputError(
                SOURCE_FIELD,
                f"the tokenizer in {path} does not produce {required}; only encoder text models are supported",
            )
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in names]


def load_tokenizer(path: Path):  # -> transformers.PreTrainedTokenizerBase (kept lazy)
    """The directory's tokenizer, offline."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise JobInputError(
            SOURCE_FIELD, f"no usable tokenizer in {path} (tokenizer.json / vocab files): {first_line(err, 200)}"
        ) from err


def sentence_transformer_head(path: Path) -> tuple[str, bool]:
    """(pooling mode, normalize) from modules.json; mean pooling without it, like sentence-transformers."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return "mean_tokens", False
    try:
        modules = json.loads(modules_file.read_text())
    except json.JSONDecodeError as err:
        raise JobInputError(SOURCE_FIELD, f"{modules_file} is not valid JSON: {first_line(err, 200)}") from err
    pooling, normalize = "mean_tokens", False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith(".Pooling"):
            pooling = pooling_mode(path / module.get("path", ""))
        elif kind.endswith(".Normalize"):
            normalize = True
    return pooling, normalize


def pooling_mode(pooling_dir: Path) -> str:
    """The one enabled pooling mode in a sentence-transformers Pooling config."""
    config_file = pooling_dir / "config.json"
    if not config_file.is_file():
        return "mean_tokens"
    config = json.loads(config_file.read_text())
    enabled = [mode for mode in POOLING_MODES if config.get(f"pooling_mode_{mode}")]
    if len(enabled) != 1:
        raise JobInputError(
            SOURCE_FIELD,
            f"{config_file}: exactly one of {', '.join('pooling_mode_' + m for m in POOLING_MODES)} must be true "
            f"(got {enabled or 'none'})",
        )
    return enabled[0]


# Architectures whose TorchScript-exported graph ORT's transformer optimizer knows how to fuse.
FUSABLE_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert")


def fused_exporter(model_dir: Path) -> Callable[[ModelHandle, dict[str, np.ndarray]], ModelHandle] | None:
    """:func:`to_fused_onnx` for this directory when ORT's optimizer fuses its architecture.

    None otherwise: the caller keeps the torch.export-based ``jobs/export.to_onnx``, which
    handles more architectures than the TorchScript exporter the fusions need.
    """
    from transformers import AutoConfig

    if AutoConfig.from_pretrained(model_dir, local_files_only=True).model_type not in FUSABLE_MODEL_TYPES:
        return None
    return functools.partial(to_fused_onnx, model_dir=model_dir)


def to_fused_onnx(handle: ModelHandle, sample: dict[str, np.ndarray], model_dir: Path, opset: int = 17) -> ModelHandle:
    """Export a transformers encoder to ONNX with ORT's transformer fusions applied.

    ``modelpress.jobs.export.to_onnx`` (torch.export-based) gives a correct but unfused
    graph: ORT's fusion patterns (Attention, EmbedLayerNormalization, SkipLayerNormalization,
    BiasGelu) match the TorchScript exporter's BERT graph, not the dynamo one. Fused, the
    attention runs as one kernel and dynamic quantization turns it into QAttention, which
    is what makes int8 MiniLM faster than the unfused recipes. Transformers modules are plain
    ``nn.Module``s, so the TorchScript exporter handles them (it cannot re-export
    ``torch.export.load`` programs, which is why ``to_onnx`` does not use it). The result
    carries full shape information so ORT's quantizer can type every tensor of the
    com.microsoft ops, and SkipLayerNormalization as Sum + LayerNormalization
    (:func:`skip_layer_norm_as_sum`). Architectures the optimizer does not know are
    returned unfused.
    """
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig

    if handle.module is None:
        raise ValueError("to_fused_onnx needs a torch-stage model handle")
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    kwargs = {name: torch.from_numpy(np.ascontiguousarray(sample[name])) for name in handle.input_names}
    with tempfile.TemporaryDirectory(prefix="modelpress-fuse-") as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript exporter deprecation / tracer notes
            torch.onnx.export(
                handle.module,
                (),
                str(path),
                kwargs=kwargs,
                input_names=list(handle.input_names),
                output_names=list(handle.output_names),
                dynamic_axes={k: dict(v) for k, v in handle.dynamic_axes.items()},
                opset_version=opset,
                dynamo=False,
            )
        if config.model_type not in FUSABLE_MODEL_TYPES:
            log.info("no ORT fusions for model_type %s; exported unfused", config.model_type)
            model = onnx.load(path)
        else:
            optimizer = optimize_model(
                str(path),
                model_type="bert",
                num_heads=config.num_attention_heads,
                hidden_size=config.hidden_size,
                opt_level=0,  # python fusions only: the saved graph stays portable across ORT builds
            )
            log.info("ORT transformer fusions: %s", optimizer.get_fused_operator_statistics())
            model = optimizer.model
            if not any(o.domain == "com.microsoft" for o in model.opset_import):  # the fused ops' domain
                model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    model = skip_layer_norm_as_sum(model)
    # ORT writes sym_shape_infer_temp.onnx (+ weights) into the cwd when inference is
    # incomplete, then raises: keep that litter in a scratch directory.
    with tempfile.TemporaryDirectory(prefix="modelpress-shapes-") as tmp, contextlib.chdir(tmp):
        model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    onnx.checker.check_model(model)
    return handle.with_model(onnx_model=model)


def skip_layer_norm_as_sum(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite each com.microsoft ``SkipLayerNormalization`` as ``Sum(x, skip[, bias])`` + ``LayerNormalization``.

    Same math, much faster on CPU: onnxruntime 1.32's SkipLayerNormalization CPU kernel
    takes ~2.2 ms on a [32, 30, 384] batch (one thread) where Sum + LayerNormalization take
    ~0.4 ms; on MiniLM that is ~11% of the int8 model's time at batch 32. ``Sum`` rather
    than ``Add``: ORT's own session-time optimizer fuses Add + LayerNormalization back into
    SkipLayerNormalization, and it does not match Sum. Nodes that use the optional extra
    outputs (mean, inverse std, the sum) are kept as they are, and so is a graph below
    opset 17 (where LayerNormalization does not exist yet).
    """
    import onnx

    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 17:
        return model
    nodes = []
    for node in model.graph.node:
        extra_outputs = any(name for name in node.output[1:])
        if node.op_type != "SkipLayerNormalization" or node.domain != "com.microsoft" or extra_outputs:
            nodes.append(node)
            continue
        x, skip, gamma = node.input[0], node.input[1], node.input[2]
        beta = node.input[3] if len(node.input) > 3 else ""
        bias = node.input[4] if len(node.input) > 4 else ""
        epsilon = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-12)
        total = f"{node.output[0]}_sum"
        nodes.append(
            onnx.helper.make_node("Sum", [x, skip, *([bias] if bias else [])], [total], name=f"{node.name}_sum")
        )
        nodes.append(
            onnx.helper.make_node(
                "LayerNormalization",
                [total, gamma, *([beta] if beta else [])],
                [node.output[0]],
                name=node.name,
                axis=-1,
                epsilon=epsilon,
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
