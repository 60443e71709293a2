"""Hostile model files: every way found to make the loaders run code, read foreign files or
write into the served config is refused with a one-line error naming the spec field, and
a normal model still loads faithfully.

Every fixture is built here: a real ``torch.export.save`` archive rewritten entry by
entry, ONNX graphs with external data, a corrupt safetensors header.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from modelpress.jobs.artifact import triton_config
from modelpress.jobs.entrypoint import run_job
from modelpress.jobs.errors import JobInputError, first_line
from modelpress.jobs.models import load_source
from modelpress.summary import ExitCode, JobSummary

from .conftest import make_spec, write_spec

SECRET = b"TOP-SECRET-0123456789"


class PlantsMarker:
    """Unpickling this creates a file: proof that a loader unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class Dynamic(torch.nn.Module):
    """A tiny module whose export has symbolic shapes (floor division, max, a power), a
    buffer and a constant: what a clean copy has to carry over."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)
        self.register_buffer("shift", torch.arange(4.0))
        self.scale = torch.tensor([0.5, 1.0, 1.5, 2.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        y = self.linear(x) * self.scale + self.shift
        return y + y[: n // 2 + 1].sum() + y[: max(n - 2, 1)].mean() + torch.ones(n**2).sum()


@pytest.fixture(scope="module")
def dynamic_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    module = Dynamic().eval()
    program = torch.export.export(module, (torch.randn(5, 8),), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    torch.export.save(program, path)
    return path


def rewrite(src: Path, dst: Path, edit: Callable[[list[list]], None]) -> Path:
    """Copy a zip entry by entry through ``edit`` (a list of [name, bytes] it may change)."""
    with zipfile.ZipFile(src) as z:
        entries = [[i.filename, z.read(i)] for i in z.infolist()]
    edit(entries)
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in entries:
            z.writestr(name, data)
    return dst


def edit_json(suffix: str, change: Callable[[dict], None]) -> Callable[[list[list]], None]:
    def edit(entries: list[list]) -> None:
        entry = next(e for e in entries if e[0].endswith(suffix))
        doc = json.loads(entry[1])
        change(doc)
        entry[1] = json.dumps(doc).encode()

    return edit


def set_first_expr(doc: dict, text: str) -> None:
    """Replace the first symbolic-shape expression (``expr_str``) anywhere in model.json."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "expr_str" in item:
                item["expr_str"] = text
                return
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    raise AssertionError("no expr_str in the archive")


def touch(marker: Path) -> str:
    """Python that creates ``marker`` when evaluated."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def refused(path: Path, fragment: str, field: str = "source.storageUri", fmt: str = "pytorch-export") -> str:
    with pytest.raises(JobInputError) as info:
        load_source(path, fmt, "classification", field)
    message = str(info.value)
    assert message.startswith(f"{field}: "), message
    assert fragment in message, message
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- .pt2


def test_clean_copy_is_faithful_with_dynamic_shapes(dynamic_pt2: Path) -> None:
    handle = load_source(dynamic_pt2, "pytorch-export", "classification")
    original = torch.export.load(str(dynamic_pt2)).module()
    for batch in (4, 5, 9):
        x = torch.randn(batch, 8)
        assert torch.equal(handle.module(x), original(x))
    # The export specialised on max(n - 2, 1) != 1: its guard still refuses a batch of 3
    # (the graph would silently compute something else for it).
    for module in (handle.module, original):
        with pytest.raises(AssertionError, match="Guard failed"):
            module(torch.randn(3, 8))


def test_sympy_expression_payload_is_never_evaluated(tmp_path: Path, dynamic_pt2: Path) -> None:
    marker = tmp_path / "sympified"
    evil = rewrite(
        dynamic_pt2, tmp_path / "model.pt2", edit_json("models/model.json", lambda d: set_first_expr(d, touch(marker)))
    )
    with pytest.raises(Exception):  # noqa: B017 - torch's own loader really evaluates it...
        torch.export.load(str(evil))
    assert marker.exists()
    marker.unlink()
    refused(evil, "has a symbolic shape expression torch does not write")  # ...the job does not
    assert not marker.exists()


@pytest.mark.parametrize(
    "expr",
    [
        "Symbol('s0', positive=True).__class__",  # attribute access
        "Symbol('s0; import os', integer=True)",  # a name that is no identifier
        "Pow(Integer(10), Integer(1000000000))",  # sympy would compute 10**10**9
        "Add(Symbol('s0'), lambda: 1)",
        "eval('1')",
        "Float('1.0', precision=__import__('os').getpid())",  # a keyword that is no literal
        "Float('1.0', precision=100000000)",
    ],
)
def test_expressions_outside_the_grammar_are_refused(tmp_path: Path, dynamic_pt2: Path, expr: str) -> None:
    evil = rewrite(
        dynamic_pt2, tmp_path / "model.pt2", edit_json("models/model.json", lambda d: set_first_expr(d, expr))
    )
    refused(evil, "symbolic shape expression")


def test_guards_code_outside_the_guard_grammar_is_dropped_not_executed(tmp_path: Path, dynamic_pt2: Path) -> None:
    marker = tmp_path / "guarded"

    def add_guard(doc: dict) -> None:
        doc["guards_code"] = [f"{touch(marker)} or True"]

    evil = rewrite(dynamic_pt2, tmp_path / "model.pt2", edit_json("models/model.json", add_guard))
    torch.export.load(str(evil)).module()(torch.randn(3, 8))  # torch's own loader runs it on every call...
    assert marker.exists()
    marker.unlink()
    handle = load_source(evil, "pytorch-export", "classification")  # ...the clean copy holds none
    handle.module(torch.randn(3, 8))
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Duplicate name")  # the point of the fixture
def test_duplicate_entry_names_are_refused(tmp_path: Path, dynamic_pt2: Path) -> None:
    """torch's reader takes the first of two same-named entries, Python's zipfile the last."""
    marker = tmp_path / "unpickled"

    def shadow(entries: list[list]) -> None:
        name, data = next(e for e in entries if e[0].endswith("model_constants_config.json"))
        config = json.loads(data)
        meta = next(iter(config["config"].values()))
        meta["use_pickle"] = True
        payload = next(e for e in entries if e[0].endswith("/constants/" + meta["path_name"]))
        entries.insert(0, [name, json.dumps(config).encode()])
        entries.insert(0, [payload[0], pickle.dumps(PlantsMarker(marker))])

    evil = rewrite(dynamic_pt2, tmp_path / "model.pt2", shadow)
    refused(evil, "has two zip entries named")
    assert not marker.exists()


def test_pickled_constant_is_refused(tmp_path: Path, dynamic_pt2: Path) -> None:
    marker = tmp_path / "unpickled"

    def pickled(entries: list[list]) -> None:
        config_entry = next(e for e in entries if e[0].endswith("model_constants_config.json"))
        config = json.loads(config_entry[1])
        meta = next(iter(config["config"].values()))
        meta["use_pickle"] = True
        config_entry[1] = json.dumps(config).encode()
        next(e for e in entries if e[0].endswith("/constants/" + meta["path_name"]))[1] = pickle.dumps(
            PlantsMarker(marker)
        )

    evil = rewrite(dynamic_pt2, tmp_path / "model.pt2", pickled)
    refused(evil, "holds a pickled object")
    assert not marker.exists()


def test_pickled_sample_inputs_are_never_unpickled(tmp_path: Path, dynamic_pt2: Path) -> None:
    marker = tmp_path / "unpickled"

    def plant(entries: list[list]) -> None:
        sample = next(e for e in entries if e[0].endswith("data/sample_inputs/model.pt"))
        sample[1] = pickle.dumps(((PlantsMarker(marker),), {}))

    evil = rewrite(dynamic_pt2, tmp_path / "model.pt2", plant)
    handle = load_source(evil, "pytorch-export", "classification")
    assert handle.module(torch.randn(4, 8)).shape == (4, 4)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("target", "fragment"),
    [("torch.os.system", "calls 'torch.os.system'"), ("builtins.eval", "not a torch operator")],
)
def test_node_targets_outside_torch_operators_are_refused(
    tmp_path: Path, dynamic_pt2: Path, target: str, fragment: str
) -> None:
    def retarget(doc: dict) -> None:
        doc["graph_module"]["graph"]["nodes"][-1]["target"] = target

    evil = rewrite(dynamic_pt2, tmp_path / "model.pt2", edit_json("models/model.json", retarget))
    refused(evil, fragment)


def test_tree_spec_that_imports_a_module_is_refused(tmp_path: Path, dynamic_pt2: Path) -> None:
    def defaultdict_spec(doc: dict) -> None:
        context = {"default_factory_module": "antigravity", "default_factory_name": "fly", "dict_context": []}
        spec = [1, {"type": "collections.defaultdict", "context": json.dumps(context), "children_spec": []}]
        doc["graph_module"]["module_call_graph"][0]["signature"]["out_spec"] = json.dumps(spec)

    evil = rewrite(dynamic_pt2, tmp_path / "model.pt2", edit_json("models/model.json", defaultdict_spec))
    refused(evil, "'collections.defaultdict'")


def test_model_json_of_the_wrong_shape_is_refused_not_an_internal_error(tmp_path: Path, dynamic_pt2: Path) -> None:
    def malformed(doc: dict) -> None:
        doc["range_constraints"] = ["s0"]
        doc["graph_module"]["module_call_graph"][0]["signature"]["in_spec"] = json.dumps([1, {"type": None}])

    evil = rewrite(dynamic_pt2, tmp_path / "model.pt2", edit_json("models/model.json", malformed))
    refused(evil, "has a malformed models/model.json")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("data/aotinductor/model/model.so", "AOTInductor compiled code"), ("data/weights/model.pt", "does not write")],
)
def test_entries_torch_export_save_does_not_write_are_refused(
    tmp_path: Path, dynamic_pt2: Path, name: str, fragment: str
) -> None:
    evil = rewrite(dynamic_pt2, tmp_path / "model.pt2", lambda e: e.append([f"model/{name}", b"\x7fELF"]))
    refused(evil, fragment)


def test_hostile_pt2_through_the_job_names_the_source(tmp_path: Path, digits_dir: Path) -> None:
    marker = tmp_path / "sympified"
    evil = rewrite(
        digits_dir / "model.pt2",
        tmp_path / "model.pt2",
        edit_json("models/model.json", lambda d: set_first_expr(d, touch(marker))),
    )
    summary = run(tmp_path, evil, digits_dir / "val.npz", fmt="pytorch-export")
    assert_failed(summary, "source.storageUri: model.pt2 has a symbolic shape expression")
    assert not marker.exists()
    assert not list((tmp_path / "out").rglob("*.onnx"))


def test_hostile_distill_student_names_the_student_field(tmp_path: Path, digits_dir: Path) -> None:
    marker = tmp_path / "guarded"
    student = rewrite(
        digits_dir / "model.pt2",
        tmp_path / "student.pt2",
        edit_json("models/model.json", lambda d: set_first_expr(d, touch(marker))),
    )
    steps = [{"distill": {"student": {"storageUri": student.as_uri()}, "epochs": 1}}]
    summary = run(tmp_path, digits_dir / "model.pt2", digits_dir / "val.npz", fmt="pytorch-export", steps=steps)
    assert_failed(summary, "distill.student.storageUri: student.pt2 has a symbolic shape expression")
    assert "source.storageUri" not in summary.reason
    assert not marker.exists()


# --------------------------------------------------------------------------- ONNX


def matmul_model(weight: TensorProto, sparse: bool = False, input_name: str = "input") -> onnx.ModelProto:
    """input [N, 64] @ weight [64, 10] -> logits, the weight dense or sparse."""
    node = helper.make_node("MatMul", [input_name, "w"], ["logits"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])],
        initializer=[] if sparse else [weight],
    )
    if sparse:
        indices = numpy_helper.from_array(np.arange(10, dtype=np.int64), "w_indices")
        graph.sparse_initializer.append(helper.make_sparse_tensor(weight, indices, [64, 10]))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def external(name: str, location: str, dims: list[int]) -> TensorProto:
    """A float tensor stored in an external file at ``location``."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    tensor.external_data.add(key="location", value=location)
    return tensor


def save(model: onnx.ModelProto, path: Path) -> None:
    """The bytes as they are (``onnx.save`` would write external data *to* the locations)."""
    path.write_bytes(model.SerializeToString())


@pytest.fixture
def secret_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding a secret the model must never reach."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "secret.bin").write_bytes(SECRET * 2)
    monkeypatch.chdir(cwd)
    return cwd


def test_sparse_initializer_with_external_data_is_refused(tmp_path: Path, secret_cwd: Path) -> None:
    model_dir = tmp_path / "source"
    model_dir.mkdir()
    save(matmul_model(external("w", "secret.bin", [10]), sparse=True), model_dir / "model.onnx")
    refused(model_dir / "model.onnx", "sparse tensor 'w' keeps its data in an external file", fmt="onnx")


@pytest.mark.parametrize(
    ("location", "fragment"),
    [
        ("../../etc/hostname", "no '..'"),
        ("/etc/hostname", "no absolute path"),
        ("secret.bin", "is missing"),  # in the working directory, not beside the model
        ("link.bin", "no link out"),
    ],
)
def test_external_data_outside_the_model_folder_is_refused(
    tmp_path: Path, secret_cwd: Path, location: str, fragment: str
) -> None:
    model_dir = tmp_path / "source"
    model_dir.mkdir()
    (model_dir / "link.bin").symlink_to(secret_cwd / "secret.bin")
    save(matmul_model(external("w", location, [64, 10])), model_dir / "model.onnx")
    refused(model_dir / "model.onnx", fragment, fmt="onnx")


def test_external_data_in_a_subgraph_constant_is_checked(tmp_path: Path, secret_cwd: Path) -> None:
    """Tensors inside node attributes, in an If branch, are external data too."""
    const = helper.make_node("Constant", [], ["c"], value=external("c", "../cwd/secret.bin", [4]))
    branch = helper.make_graph([const], "b", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])])
    node = helper.make_node("If", ["flag"], ["out"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])],
    )
    model_dir = tmp_path / "source"
    model_dir.mkdir()
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model_dir / "model.onnx")
    refused(model_dir / "model.onnx", "tensor 'c' reads external data from '../cwd/secret.bin'", fmt="onnx")


def test_external_data_beside_the_model_is_read_in(tmp_path: Path) -> None:
    weight = np.arange(640, dtype=np.float32).reshape(64, 10)
    weight.tofile(tmp_path / "w.bin")
    save(matmul_model(external("w", "w.bin", [64, 10])), tmp_path / "model.onnx")
    handle = load_source(tmp_path / "model.onnx", "onnx", "classification")
    loaded = handle.onnx_model.graph.initializer[0]
    assert loaded.data_location == TensorProto.DEFAULT and not loaded.external_data
    assert np.array_equal(numpy_helper.to_array(loaded), weight)


def test_sparse_external_data_through_the_job_leaks_nothing(tmp_path: Path, secret_cwd: Path, digits_dir: Path) -> None:
    save(matmul_model(external("w", "secret.bin", [10]), sparse=True), tmp_path / "model.onnx")
    summary = run(tmp_path, tmp_path / "model.onnx", digits_dir / "val.npz")
    assert_failed(summary, "source.storageUri: model.onnx: sparse tensor 'w'")
    for path in (tmp_path / "out").rglob("*"):
        assert not path.is_file() or SECRET not in path.read_bytes()
    assert SECRET.decode() not in summary.model_dump_json()


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("kind", ["input", "output"])
def test_names_that_would_inject_into_config_pbtxt_are_refused(tmp_path: Path, digits_dir: Path, kind: str) -> None:
    model = onnx.load(digits_dir / "model.onnx")
    evil = 'x"\n}\n]\ninstance_group [ { kind: KIND_MODEL } ]\ninput [\n{\n name: "y'
    old = (model.graph.input if kind == "input" else model.graph.output)[0].name
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = evil if name == old else name
        for i, name in enumerate(node.output):
            node.output[i] = evil if name == old else name
    (model.graph.input if kind == "input" else model.graph.output)[0].name = evil
    save(model, tmp_path / "model.onnx")
    summary = run(tmp_path, tmp_path / "model.onnx", digits_dir / "val.npz")
    assert_failed(summary, f"source.storageUri: the model's {kind} name 'x\"\\n}}", "rename the")
    assert "\n" not in summary.reason
    assert not list((tmp_path / "out").rglob("config.pbtxt"))


def test_triton_config_never_writes_an_unsafe_name(digits_dir: Path) -> None:
    model = onnx.load(digits_dir / "model.onnx")
    assert 'name: "' in triton_config(model)
    model.graph.output[0].name = 'logits"\n'
    with pytest.raises(ValueError, match="cannot be written into config.pbtxt"):
        triton_config(model)


# --------------------------------------------------------------------------- errors


def test_custom_op_the_runtime_cannot_load_names_the_source(tmp_path: Path, digits_dir: Path) -> None:
    node = helper.make_node("Boom", ["input"], ["logits"], domain="com.example.evil")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example.evil", 1)]
    save(helper.make_model(graph, opset_imports=opsets), tmp_path / "model.onnx")
    summary = run(tmp_path, tmp_path / "model.onnx", digits_dir / "val.npz")
    assert_failed(summary, "source.storageUri: onnxruntime cannot load the model")
    assert "validation.dataset" not in summary.reason


def _with_bomb(feeds_on_input: bool) -> onnx.ModelProto:
    """digits-shaped model whose extra branch asks for 4 TiB: from a constant, or shaped by the input."""
    shape = numpy_helper.from_array(np.array([2**40], dtype=np.int64), "huge")
    nodes = []
    if feeds_on_input:  # the size comes from the data: the data may be at fault
        nodes.append(helper.make_node("Shape", ["input"], ["rows"], name="rows", start=0, end=1))
        nodes.append(helper.make_node("Mul", ["rows", "huge"], ["size"], name="size"))
    else:
        nodes.append(helper.make_node("Identity", ["huge"], ["size"], name="size"))
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])
    nodes += [
        helper.make_node("ConstantOfShape", ["size"], ["big"], name="bomb", value=value),
        helper.make_node("ReduceSum", ["big"], ["total"], name="total", keepdims=0),
        helper.make_node("MatMul", ["input", "w"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "total"], ["logits"], name="logits"),
    ]
    w = numpy_helper.from_array(np.zeros((64, 10), np.float32), "w")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])],
        [shape, w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("feeds_on_input", "field"), [(False, "source.storageUri"), (True, "validation.dataset")])
def test_a_node_that_fails_on_any_data_is_the_models_fault(
    tmp_path: Path, digits_dir: Path, feeds_on_input: bool, field: str
) -> None:
    """onnxruntime skips folding a 4 TiB ConstantOfShape, so it fails only when run."""
    save(_with_bomb(feeds_on_input), tmp_path / "model.onnx")
    summary = run(tmp_path, tmp_path / "model.onnx", digits_dir / "val.npz")
    assert_failed(summary, f"{field}: ")
    if not feeds_on_input:
        assert "node 'bomb' (ConstantOfShape) fails whatever the input data" in summary.reason


def test_corrupt_safetensors_header_names_the_field_file_and_uri(tmp_path: Path) -> None:
    model_dir = tmp_path / "scratch" / "source"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (model_dir / "model.safetensors").write_bytes((2**40).to_bytes(8, "little") + b'{"a": "\n"}')
    with pytest.raises(JobInputError) as info:
        load_source(model_dir, "hf-transformers", "embedding", uri="s3://models/minilm/")
    message = str(info.value)
    assert message.startswith("source.storageUri: s3://models/minilm/model.safetensors is not a valid safetensors")
    assert str(tmp_path) not in message and "\n" not in message


def test_first_line_cuts_at_a_word_boundary() -> None:
    error = ValueError("the model needs " + "many " * 100 + "inputs\nsecond line")
    line = first_line(error, 60)
    assert len(line) <= 60 and line.endswith("…")
    assert line[:-1].endswith("many")
    assert first_line(ValueError("short\nmore"), 60) == "short"


# --------------------------------------------------------------------------- helpers


def run(tmp_path: Path, model: Path, dataset: Path, fmt: str = "onnx", **kw) -> JobSummary:
    doc = make_spec(model.as_uri(), dataset.as_uri(), (tmp_path / "out").as_uri(), fmt=fmt, **kw)
    return run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")


def assert_failed(summary: JobSummary, *fragments: str) -> None:
    assert summary.outcome == "Failed", summary.reason
    assert summary.exit_code == ExitCode.FAILED
    for fragment in fragments:
        assert fragment in summary.reason, summary.reason
    assert "Traceback" not in summary.reason and "internal error" not in summary.reason
