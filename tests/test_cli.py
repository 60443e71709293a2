"""The `modelpress` command line: output formats and exit codes (0 ok, 1 problems, 2 usage)."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelpress import __version__
from modelpress.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
BAD = """apiVersion: modelpress.io/v1alpha1
kind: CompressedModel
metadata: {name: bad}
spec:
  source: {storageUri: s3://m/model.onnx, format: onnx, task: classification}
  compression: {steps: [{prune: {sparsity: 2}}]}
  validation:
    dataset: {storageUri: s3://d/val.npz, format: npz}
    metric: accuracy
    maxAccuracyDrop: {absolute: 0.01}
  output: {storageUri: s3://o/}
"""


def test_version_text_and_json(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"modelpress {__version__} (API modelpress.io/v1alpha1)"
    assert main(["version", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"version": __version__, "apiVersion": "modelpress.io/v1alpha1"}


def test_validate_valid_files_exit_0(capsys):
    assert main(["validate", *map(str, EXAMPLES)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(EXAMPLES)
    assert all(line.endswith(" valid") for line in lines)
    assert f"{EXAMPLES[0]}: {yaml.safe_load(EXAMPLES[0].read_text())['metadata']['name']} valid" in lines


def test_validate_problems_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    assert main(["validate", str(EXAMPLES[0]), str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert (
        out[1]
        == f"{bad} bad: spec.compression.steps[0].prune.sparsity: got 2; out of range; allowed: >= 0.0 and <= 0.95"
    )


def test_validate_json_output(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD + "---\n" + EXAMPLES[0].read_text())
    assert main(["validate", "-o", "json", str(bad)]) == 1
    results = json.loads(capsys.readouterr().out)
    assert [(r["document"], r["valid"]) for r in results] == [(1, False), (2, True)]
    assert results[0]["problems"] == [
        {
            "path": "spec.compression.steps[0].prune.sparsity",
            "message": "got 2; out of range",
            "fix": "allowed: >= 0.0 and <= 0.95",
        }
    ]


def test_validate_reads_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(BAD))
    assert main(["validate", "-"]) == 1
    assert capsys.readouterr().out.startswith("<stdin> bad: spec.compression.steps[0].prune.sparsity")


def test_validate_missing_file_exit_1(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read the file" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [[], ["validate"], ["validate", "-o", "xml", "f.yaml"], ["crd", "-o", "toml"], ["nope"]]
)
def test_usage_errors_exit_2(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    assert code == 2


def test_crd_yaml_and_json(capsys):
    assert main(["crd"]) == 0
    as_yaml = yaml.safe_load(capsys.readouterr().out)
    assert main(["crd", "-o", "json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_yaml == as_json
    assert as_yaml["kind"] == "CustomResourceDefinition"
    assert as_yaml == yaml.safe_load((ROOT / "crds" / "compressedmodels.modelpress.io.yaml").read_text())


def test_installed_script_reports_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: modelpress.io/v1alpha1\nkind: CompressedModel\nspec: [\n")
    script = Path(sys.executable).with_name("modelpress")
    done = subprocess.run([str(script), "validate", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "invalid YAML" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_render_reports_problems_as_validate_does(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    assert main(["validate", str(bad)]) == 1
    validated = capsys.readouterr().out
    assert main(["render", str(bad)]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err == validated
    assert out.err.startswith(f"{bad} bad: spec.compression.steps[0].prune.sparsity: got 2")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("kind: CompressedModel\nspec: [\n", "invalid YAML"),
        (BAD + "---\n" + BAD, "holds 2 documents; render one CompressedModel at a time"),
        ("", "no CompressedModel found"),
    ],
)
def test_render_refuses_what_it_cannot_render_without_traceback(tmp_path, capsys, text, words):
    path = tmp_path / "in.yaml"
    path.write_text(text)
    assert main(["render", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(str(path)) and words in err and "Traceback" not in err


def test_render_reads_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(EXAMPLES[0].read_text()))
    assert main(["render", "-", "-o", "json"]) == 0
    kinds = [o["kind"] for o in json.loads(capsys.readouterr().out)["items"]]
    assert kinds[:2] == ["ConfigMap", "Job"]


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_version_flag_matches_version_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    flag = capsys.readouterr().out.strip()
    assert main(["version"]) == 0
    assert flag == capsys.readouterr().out.strip() == f"modelpress {__version__} (API modelpress.io/v1alpha1)"


def test_version_yaml(capsys):
    assert main(["version", "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"version": __version__, "apiVersion": "modelpress.io/v1alpha1"}


# Every command but the long-running operator prints an object (or a list of them). predict's
# --output is the predictions file; its summary takes --summary json|yaml (tests/jobs/test_predict.py).
PRINTS_OBJECTS = [name for name in COMMANDS if name not in ("operator", "predict")]


@pytest.mark.parametrize("command", PRINTS_OBJECTS)
def test_every_command_that_prints_objects_takes_o_json_and_yaml(command, capsys):
    match = re.search(r"-o \{([a-z,]+)\}, --output", _help([command], capsys))
    assert match, f"`modelpress {command}` has no -o/--output"
    assert {"json", "yaml"} <= set(match.group(1).split(","))


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_each_commands_exit_codes(command, capsys):
    epilog = _help([command], capsys).split("exit codes:\n", 1)[1]
    listed = {int(line.split()[0]) for line in epilog.splitlines() if line.strip()}
    assert listed == set(COMMANDS[command].exit_codes()) | {2, 130}


def test_overall_help_covers_every_commands_exit_codes(capsys):
    epilog = _help([], capsys).split("exit codes:\n", 1)[1]
    listed = {int(line.split()[0]) for line in epilog.splitlines() if line[:3].strip().isdigit()}
    assert listed == set().union(*(c.exit_codes() for c in COMMANDS.values())) | {2, 130}


def test_job_exit_codes_in_help_are_the_documented_ones():
    from modelpress.summary import ExitCode

    assert set(COMMANDS["run"].exit_codes()) == set(COMMANDS["job"].exit_codes()) == {int(c) for c in ExitCode}


def test_validate_yaml_output_is_the_json_output(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD + "---\n" + EXAMPLES[0].read_text())
    assert main(["validate", "-o", "json", str(bad)]) == 1
    as_json = json.loads(capsys.readouterr().out)
    assert main(["validate", "-o", "yaml", str(bad)]) == 1
    assert yaml.safe_load(capsys.readouterr().out) == as_json


@pytest.mark.parametrize(("command", "output"), [("run", "json"), ("job", "yaml")])
def test_run_and_job_print_the_summary_object(tmp_path, command, output):
    """A spec that cannot be read fails fast: the summary is the only thing on stdout."""
    missing = tmp_path / "missing.yaml"
    extra = ["--termination-log", str(tmp_path / "termination-log")] if command == "job" else []
    script = Path(sys.executable).with_name("modelpress")
    spec_flag = ["--spec", str(missing)] if command == "job" else [str(missing)]
    done = subprocess.run(
        [str(script), command, *spec_flag, "--workdir", str(tmp_path / "work"), "-o", output, *extra],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout) if output == "json" else yaml.safe_load(done.stdout)
    assert summary["outcome"] == "Failed" and "missing.yaml" in summary["reason"]
    if command == "job":  # the kubelet still gets compact JSON
        assert json.loads((tmp_path / "termination-log").read_text()) == summary
