"""Hostile spec files: every command that reads a spec refuses them fast, in one line.

The inputs are generated here: an alias "billion laughs", a recursive alias, nesting
10,000 deep (YAML flow and JSON), a 5,000-digit integer and a file of gigabytes. Each
goes through ``modelpress validate``, ``render``, ``run`` and the Job entrypoint as a
process under a 1 GiB address-space limit, so a regression fails (MemoryError, a
timeout) instead of taking the machine down.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelpress import spec_io
from modelpress.operator.validation import SpecInvalid, parse_model
from modelpress.validate import check_documents, load_text

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = (ROOT / "examples" / "quantize-dynamic.yaml").read_text()
HEAD = "apiVersion: modelpress.io/v1alpha1\nkind: CompressedModel\nmetadata: {name: hostile}\n"
DEEP = 10_000


def billion_laughs(levels: int = 9) -> str:
    """``lol9`` expands to 10**9 strings: gigabytes once constructed."""
    lines = [HEAD, "spec:\n", f"  lol0: &lol0 [{', '.join(['lol'] * 10)}]\n"]
    for i in range(1, levels + 1):
        lines.append(f"  lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 10)}]\n")
    return "".join(lines)


def deep_json() -> str:
    nested = '{"a": ' * DEEP + "1" + "}" * DEEP
    return f'{{"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressedModel", "spec": {nested}}}'


HOSTILE = {
    "billion-laughs": (billion_laughs(), "YAML aliases expand to more than 10000 nodes (limit)"),
    "recursive-alias": (HEAD + "spec: &spec {self: *spec}\n", "recursive YAML alias *spec"),
    "deep-yaml": (HEAD + "spec: {x: " + "[" * DEEP + "]" * DEEP + "}\n", "nested deeper than 64 levels (limit)"),
    "deep-json": (deep_json(), "nested deeper than 64 levels (limit)"),
    "huge-int": (EXAMPLE.replace("batchSize: 8", "batchSize: " + "9" * 5000), "integer too large (limit: 64-bit)"),
}
HUGE = "input larger than 1 MiB (limit)"


def write_hostile(tmp_path: Path, name: str) -> tuple[Path, str]:
    """The file for ``name`` and the words its error must say; ``huge-file`` is a sparse
    4 GiB file (no disk used): reading it whole would break the address-space limit."""
    path = tmp_path / f"{name}.yaml"
    if name == "huge-file":
        with path.open("wb") as f:
            f.write(EXAMPLE.encode())
            f.truncate(4 << 30)
        return path, HUGE
    text, words = HOSTILE[name]
    path.write_text(text)
    return path, words


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def run_limited(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A command under 1 GiB of address space; the timeout only catches a hang."""
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_memory,
        # rich would wrap the one-line reason of `modelpress run` at 80 columns
        env={**os.environ, "COLUMNS": "2000", **(env or {})},
    )


def assert_one_line(output: str, words: str) -> str:
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if words in line]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


NAMES = [*HOSTILE, "huge-file"]


@pytest.mark.parametrize("name", NAMES)
def test_validate_refuses_in_one_line(tmp_path: Path, name: str) -> None:
    path, words = write_hostile(tmp_path, name)
    done = run_limited("-m", "modelpress.cli", "validate", str(path))
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr == ""
    assert assert_one_line(done.stdout, words).startswith(f"{path} ")


@pytest.mark.parametrize("name", NAMES)
def test_render_refuses_in_one_line(tmp_path: Path, name: str) -> None:
    path, words = write_hostile(tmp_path, name)
    done = run_limited("-m", "modelpress.cli", "render", str(path))
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stdout == ""
    assert assert_one_line(done.stderr, words).startswith(f"{path} ")


@pytest.mark.parametrize("name", NAMES)
def test_run_fails_in_one_line(tmp_path: Path, name: str) -> None:
    path, words = write_hostile(tmp_path, name)
    done = run_limited("-m", "modelpress.cli", "run", str(path), "--workdir", str(tmp_path / "work"))
    assert done.returncode == 1, done.stderr[-3000:]
    assert assert_one_line(done.stdout + done.stderr, words).startswith("Failed: ")


@pytest.mark.parametrize("name", NAMES)
def test_job_entrypoint_fails_in_one_line(tmp_path: Path, name: str) -> None:
    path, words = write_hostile(tmp_path, name)
    log = tmp_path / "termination-log"
    done = run_limited(
        "-m", "modelpress.jobs", "--spec", str(path), "--termination-log", str(log), "--workdir", str(tmp_path / "w")
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    summary = json.loads(log.read_text())
    assert summary["outcome"] == "Failed"
    assert words in summary["reason"] and "\n" not in summary["reason"]


def test_job_entrypoint_refuses_a_deep_spec_from_its_environment(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    done = run_limited(
        "-m",
        "modelpress.jobs",
        "--termination-log",
        str(log),
        "--workdir",
        str(tmp_path / "w"),
        env={"MODELPRESS_SPEC": deep_json()},
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    reason = json.loads(log.read_text())["reason"]
    assert "nested deeper than 64 levels (limit)" in reason and "env MODELPRESS_SPEC" in reason


# In process: the cheap inputs, for where each problem is reported.


@pytest.mark.parametrize("name", ["recursive-alias", "deep-yaml", "deep-json", "huge-int"])
def test_each_hostile_text_is_one_problem(name: str) -> None:
    text, words = HOSTILE[name]
    (problem,) = check_documents(text, "h.yaml")
    assert words in problem.message
    assert len(problem.path) <= 160, "the path of a deep value is shortened"


def test_problems_name_the_field_and_the_line() -> None:
    (problem,) = check_documents(HOSTILE["huge-int"][0], "h.yaml")
    assert problem.path == "spec.validation.batchSize"
    before = EXAMPLE[: EXAMPLE.index("batchSize: 8")]
    line, column = 1 + before.count("\n"), len(before) - before.rfind("\n") + len("batchSize: ")
    assert problem.message == f"integer too large (limit: 64-bit) at line {line}, column {column}"
    # lol3 is the first to expand past the budget: 1 + 10 * 1111 nodes.
    (laughs,) = check_documents(billion_laughs(), "h.yaml")
    assert laughs.path == "spec.lol3" and "YAML aliases expand to more than 10000 nodes (limit)" in laughs.message


def test_limits_sit_where_they_say() -> None:
    nested = lambda depth: "[" * depth + "]" * depth  # noqa: E731
    assert list(spec_io.documents(nested(spec_io.MAX_DEPTH)))
    with pytest.raises(spec_io.SpecError, match="nested deeper than 64 levels"):
        list(spec_io.documents(nested(spec_io.MAX_DEPTH + 1)))
    assert list(spec_io.documents(f"a: {2**63 - 1}\nb: {-(2**63)}\n")) == [{"a": 2**63 - 1, "b": -(2**63)}]
    for big in (2**63, -(2**63) - 1, "0x1" + "0" * 16):
        with pytest.raises(spec_io.SpecError, match=r"^a: integer too large \(limit: 64-bit\)"):
            list(spec_io.documents(f"a: {big}\n"))
    assert len(list(spec_io.documents("[" + "0, " * (spec_io.MAX_NODES - 2) + "0]"))[0]) == spec_io.MAX_NODES - 1
    with pytest.raises(spec_io.SpecError, match="more than 10000 YAML nodes in one document"):
        list(spec_io.documents("[" + "0, " * spec_io.MAX_NODES + "0]"))


def test_aliases_nesting_deep_together_are_refused() -> None:
    """Each anchor is shallow; expanded, the chain is 10 x 9 levels deep."""
    lines = ["a0: &a0 " + "[" * 9 + "1" + "]" * 9]
    lines += [f"a{i}: &a{i} " + "[" * 9 + f"*a{i - 1}" + "]" * 9 for i in range(1, 10)]
    with pytest.raises(spec_io.SpecError, match=r"YAML aliases nest deeper than 64 levels \(limit\)"):
        list(spec_io.documents("\n".join(lines)))


def test_one_long_string_repeated_by_aliases_is_refused() -> None:
    text = "s: &s " + "x" * 200_000 + "\nl: [" + ", ".join(["*s"] * 20) + "]\n"
    with pytest.raises(spec_io.SpecError, match=r"YAML aliases expand to more than 2 MiB of text \(limit\)"):
        list(spec_io.documents(text))
    with pytest.raises(spec_io.SpecError, match=r"string of 262145 characters, more than 262144 \(limit\)"):
        list(spec_io.documents("a: " + "x" * (spec_io.MAX_STRING_CHARS + 1)))


def test_ordinary_aliases_and_merge_keys_still_work() -> None:
    text = "base: &base {a: 1, b: [x, y]}\nother:\n  <<: *base\n  c: 2\nagain: *base\n"
    (doc,) = spec_io.documents(text)
    assert doc["other"] == {"a": 1, "b": ["x", "y"], "c": 2} and doc["again"] == doc["base"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a: !!bool maybe", "'maybe' is not a valid bool"),
        ("a: !!timestamp soon", "'soon' is not a valid timestamp"),
        ("a: 2024-13-45", "'2024-13-45' is not a valid timestamp"),
        ("a: !!float many", "'many' is not a valid float"),
        ("a: !!int 1.5", "'1.5' is not a valid int"),
        ("a: 1\na: 2", "found duplicate key 'a'"),
    ],
)
def test_values_pyyaml_cannot_build_are_problems_not_crashes(text: str, words: str) -> None:
    with pytest.raises(spec_io.SpecError, match=words):
        list(spec_io.documents(text))


def test_documents_before_a_hostile_one_keep_their_results() -> None:
    results = load_text(EXAMPLE + "---\n" + HOSTILE["recursive-alias"][0], "two.yaml")
    assert [(r.document, r.valid) for r, _ in results] == [(1, True), (2, False)]
    assert "recursive YAML alias" in results[1][0].problems[0].message


def test_reading_stops_at_the_byte_limit(tmp_path: Path) -> None:
    path, words = write_hostile(tmp_path, "huge-file")
    with pytest.raises(spec_io.SpecError, match=re.escape(words)):
        spec_io.read_text(path)
    with pytest.raises(spec_io.SpecError, match=re.escape(words)):
        list(spec_io.documents("#" * (spec_io.MAX_BYTES + 1)))
    (problem,) = check_documents("a: b\n" + "#" * spec_io.MAX_BYTES, "big.yaml")
    assert problem.message == words


def test_operator_parse_refuses_hostile_json_in_one_line() -> None:
    """What the API server hands the operator has been through no YAML limit."""
    body = yaml.safe_load(EXAMPLE)
    deep: object = 1
    for _ in range(DEEP):
        deep = {"a": deep}
    for spec, words in (
        ({**body["spec"], "x": deep}, "nested deeper than 64 levels (limit)"),
        ({**body["spec"], "validation": {**body["spec"]["validation"], "batchSize": 10**4000}}, "integer too large"),
    ):
        with pytest.raises(SpecInvalid) as err:
            parse_model({"metadata": body["metadata"], "spec": spec})
        assert words in str(err.value) and "\n" not in str(err.value)
