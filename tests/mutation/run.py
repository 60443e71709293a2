"""Mutation testing of the decision modules: ``make mutation`` (not part of ``make test``).

For each module in :data:`MODULES`, every mutant of the named functions (see
:mod:`mutants`) is written over the module in a private copy of the repository, and the
fast tests that cover the module run against it with ``-x``; a mutant is *killed* when
they fail (or time out), *survived* when they pass. Equivalent mutants -- changes no
test can observe because the behaviour is the same -- are listed in :data:`EQUIVALENT`
with the reason, and left out of the score (killed / non-equivalent).

Why a copy: other people run tests against the working tree, so it is never written. The
copy maps ``src/modelpress``, ``operator/`` and ``jobs/`` into one importable
``modelpress`` package (what the strict editable install does with symlinks), put first
on ``sys.path`` so it shadows the editable install.

Why fork: starting Python with torch, pydantic and kopf costs ~3 s, the tests of one
mutant often well under a second. The parent imports the third-party modules the tests
use (never ``modelpress`` or a test module) and forks one child per mutant, which
imports the mutated package fresh and runs ``pytest.main``; one child at a time, niced,
because the machine is shared.

Usage: ``python tests/mutation/run.py [--module gate] [--json PATH] [--show-survivors]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import Mutant, mutants  # noqa: E402  (run as a script: its own folder first)

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"


@dataclass(frozen=True)
class Module:
    """A module to mutate: its file, the functions/names that decide, the fast tests that cover them."""

    name: str
    path: str
    targets: list[str]
    tests: list[str]  # test files, fastest and most targeted first (-x stops at the first failure)
    select: str = ""  # a pytest -k expression, where only some tests of those files cover the module


# Gate last: it was still being edited when this was written, so it is copied last.
MODULES = [
    Module(
        "analysis",
        "operator/analysis.py",
        ["analyse", "error_rate_test", "_compare_errors", "wilson_upper_bound", "judge_shadow", "_judge_agreement"],
        [
            "tests/operator/test_analysis_verdicts.py",
            "tests/serving/test_analysis_scope.py",
            "tests/serving/test_shadow_analysis.py",
            "tests/serving/test_business_analysis.py",
        ],
        select="not real_feedback_counters",  # real ModelServers and Prometheus: seconds, not the decision
    ),
    Module(
        "rollout",
        "operator/rollout.py",
        [
            "MAX_HISTORY",
            "_UNIT_SECONDS",
            "parse_duration",
            "desired_traffic",
            "is_active",
            "settled",
            "_event",
            "_update",
            "analysis_due",
            "plan",
            "in_shadow",
            "stage_started",
            "stage_window",
            "_plan_shadow",
        ],
        [
            "tests/serving/test_rollout_edges.py",
            "tests/serving/test_rollout.py",
            "tests/serving/test_shadow_rollout.py",
        ],
    ),
    Module(
        "status",
        "operator/status.py",
        [
            "condition",
            "merge_conditions",
            "same_conditions",
            "serving_enabled",
            "termination_message",
            "outcome_status",
        ],
        ["tests/operator/test_conditions.py", "tests/operator/test_status_logic.py"],
    ),
    Module(
        "phases",
        "operator/phases.py",
        ["transition", "spec_valid", "progress_phase", "progress_conditions", "decide"],
        ["tests/operator/test_phases.py", "tests/operator/test_conditions.py"],
    ),
    Module(
        "api",
        "src/modelpress/api.py",
        ["semantic_problems", "recipe_hash"],
        [
            "tests/test_recipe_hash.py",
            "tests/test_semantic_rules.py",
            "tests/test_contract.py",
            "tests/test_validate.py",
        ],
        select="not near_valid_specs",  # a slow hypothesis search, about the validator rather than these rules
    ),
    Module(
        "gate",
        "jobs/gate.py",
        [
            "HIGHER_IS_BETTER",
            "MB",
            "BOOTSTRAP_RESAMPLES",
            "BOOTSTRAP_SEED",
            "BOOTSTRAP_CELLS",
            "accuracy_drop",
            "evaluate",
            "drop_upper_bound",
            "_weighted_score",
            "_slices",
            "_ratio",
            "_finite",
            "_fmt",
            "_pct",
        ],
        [
            "tests/jobs/test_gate_boundaries.py",
            "tests/jobs/test_pipeline.py",
            "tests/jobs/test_hostile_data.py",
        ],
        select="gate",  # the rest of those files runs whole compression jobs
    ),
]

# (target, original, mutated) -> why no test can tell the mutant from the original.
IN_TIME_ORDER = "history[-0:] / history[-2:]: history is appended in time order (each entry stamped `now`), so the newest entry is the last"
CHUNK_ONLY = (
    "BOOTSTRAP_CELLS only sizes the chunks the bootstrap draws its resamples in (memory); the resamples, and "
    "so the bound, are the same for any chunk size (test_the_bootstrap_bounds_its_memory_in_chunks)"
)
EQUIVALENT: dict[str, dict[tuple[str, str, str], str]] = {
    "analysis": {},
    "rollout": {
        ("analysis_due", "1", "0"): IN_TIME_ORDER,
        ("analysis_due", "1", "2"): IN_TIME_ORDER,
        # Keys are line-blind: the other 0 -> -1 mutants of _plan_shadow (steps[0], step, failures) are killed.
        ("_plan_shadow", "0", "-1"): "no history: `left` timedelta(0) or (-1) is only compared <= timedelta(0)",
    },
    "status": {},
    "phases": {},
    "api": {},
    "gate": {
        ("BOOTSTRAP_CELLS", "4000000", "0"): CHUNK_ONLY,
        ("BOOTSTRAP_CELLS", "4000000", "3999999"): CHUNK_ONLY,
        ("BOOTSTRAP_CELLS", "4000000", "4000001"): CHUNK_ONLY,
    },
}


@dataclass
class Outcome:
    mutant: Mutant
    result: str  # killed | timeout | survived | equivalent | error
    seconds: float
    reason: str = ""


@dataclass
class Report:
    module: Module
    baseline_s: float
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, *results: str) -> int:
        return sum(o.result in results for o in self.outcomes)

    @property
    def score(self) -> float:
        judged = len(self.outcomes) - self.count("equivalent")
        return self.count("killed", "timeout") / judged if judged else 1.0


def build_tree(tmp: Path) -> Path:
    """A copy of the repository where ``modelpress`` (with ``operator`` and ``jobs`` inside) imports from ``pkg/``."""
    if tmp.exists():
        shutil.rmtree(tmp)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(ROOT / "src" / "modelpress", tmp / "pkg" / "modelpress", ignore=ignore)
    shutil.copytree(ROOT / "operator", tmp / "pkg" / "modelpress" / "operator", ignore=ignore)
    shutil.copytree(ROOT / "jobs", tmp / "pkg" / "modelpress" / "jobs", ignore=ignore)
    shutil.copytree(ROOT / "tests", tmp / "tests", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    for extra in ("examples", "crds", "charts", "docs"):  # read by a few tests; never written
        if (ROOT / extra).exists():
            (tmp / extra).symlink_to(ROOT / extra)
    return tmp


def package_file(tree: Path, path: str) -> Path:
    """Where ``path`` (as in the repository) lives in the copy."""
    for prefix, target in (("src/modelpress/", "pkg/modelpress/"), ("operator/", "pkg/modelpress/operator/")):
        if path.startswith(prefix):
            return tree / target / path.removeprefix(prefix)
    return tree / "pkg" / "modelpress" / "jobs" / path.removeprefix("jobs/")


def run_tests(tree: Path, tests: list[str], timeout: float, log: Path, record_modules: Path | None = None) -> str:
    """Run ``tests`` in a forked child against the copy: 'passed', 'failed', 'timeout' or 'error'."""
    pid = os.fork()
    if pid == 0:  # child: import the copy, run pytest, report through the exit code
        code = 4
        try:
            os.chdir(tree)
            sys.path.insert(0, str(tree / "pkg"))
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            import pytest

            args = ["-x", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0"]  # the same examples every run
            args += ["--rootdir", str(tree), "-c", str(tree / "pyproject.toml")]
            code = int(pytest.main([*args, *tests]))
            if record_modules is not None:
                record_modules.write_text(json.dumps(sorted(_third_party(tree))))
                if not sys.modules["modelpress"].__file__.startswith(str(tree)):
                    code = 4  # the copy did not shadow the installed package: the run proves nothing
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return {0: "passed", 1: "failed", 2: "failed"}.get(code, "error")
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.02)


def _third_party(tree: Path) -> list[str]:
    """Modules the tests imported that neither come from the copy nor are ``modelpress``: safe to preload."""
    names = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        if name.split(".")[0] in ("modelpress", "__main__") or file.startswith(str(tree)):
            continue
        names.append(name)
    return names


def preload(names: list[str]) -> None:
    """Import in the parent what every child would import anyway, so forks start warm."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 -- a module that only imports inside pytest is simply not preloaded
            pass


def run_module(module: Module, work: Path, show: bool) -> Report:
    tree = build_tree(work / "tree")  # a fresh snapshot per module: the source as it is now
    target = package_file(tree, module.path)
    original = target.read_text()
    log = work / "pytest.log"
    modules_file = work / "modules.json"
    start = time.monotonic()
    tests = [*module.tests, "-k", module.select] if module.select else module.tests
    result = run_tests(tree, tests, 600, log, record_modules=modules_file)
    baseline = time.monotonic() - start
    if result != "passed":
        raise SystemExit(f"{module.path}: the unmutated tests do not pass ({result}); see {log}:\n{log.read_text()}")
    preload(json.loads(modules_file.read_text()))
    report = Report(module, baseline)
    timeout = max(30.0, 5 * baseline)
    equivalent = EQUIVALENT.get(module.name, {})
    all_mutants = mutants(original, module.targets)
    for i, m in enumerate(all_mutants, 1):
        target.write_text(m.source)
        t0 = time.monotonic()
        result = run_tests(tree, tests, timeout, log)
        seconds = time.monotonic() - t0
        outcome = {"failed": "killed", "passed": "survived"}.get(result, result)
        reason = ""
        if outcome == "survived" and m.key in equivalent:
            outcome, reason = "equivalent", equivalent[m.key]
        elif outcome != "survived" and m.key in equivalent:
            print(f"  note: listed as equivalent but {outcome}: {m.key}", flush=True)
        report.outcomes.append(Outcome(m, outcome, seconds, reason))
        if show and outcome in ("survived", "error"):
            print(
                f"  [{i}/{len(all_mutants)}] {outcome} {module.path}:{m.line} {m.original} -> {m.mutated}", flush=True
            )
    target.write_text(original)
    return report


def as_json(reports: list[Report], seconds: float) -> dict:
    def entry(o: Outcome) -> dict:
        e = {"target": o.mutant.target, "line": o.mutant.line, "original": o.mutant.original}
        e["mutated"] = o.mutant.mutated
        return {**e, "reason": o.reason} if o.reason else e

    return {
        "command": "make mutation",
        "seconds": round(seconds),
        "modules": {
            r.module.path: {
                "targets": r.module.targets,
                "tests": r.module.tests,
                "select": r.module.select,
                "mutants": len(r.outcomes),
                "killed": r.count("killed", "timeout"),
                "timeouts": r.count("timeout"),
                "survived": r.count("survived"),
                "errors": r.count("error"),
                "equivalent": r.count("equivalent"),
                "score": round(r.score, 4),
                "survivors": [entry(o) for o in r.outcomes if o.result in ("survived", "error")],
                "equivalents": [entry(o) for o in r.outcomes if o.result == "equivalent"],
            }
            for r in reports
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=[m.name for m in MODULES], help="only these (repeatable)")
    parser.add_argument("--json", type=Path, help=f"where to write the report (default with every module: {RESULTS})")
    parser.add_argument("--show-survivors", action="store_true", help="print each surviving mutant as it is found")
    parser.add_argument("--min-score", type=float, default=0.9, help="exit 1 when a module scores below this")
    args = parser.parse_args(argv)
    sys.dont_write_bytecode = True  # a mutated module must never be served from a stale .pyc
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # as tests/conftest.py, before anything imports torch
        os.environ.setdefault(var, "1")
    selected = [m for m in MODULES if not args.module or m.name in args.module]
    start = time.monotonic()
    reports = []
    with tempfile.TemporaryDirectory(prefix="modelpress-mutation-") as tmp:
        for module in selected:
            print(f"{module.path}: mutating {', '.join(module.targets)}", flush=True)
            report = run_module(module, Path(tmp), args.show_survivors)
            reports.append(report)
            print(
                f"  {len(report.outcomes)} mutants, {report.count('killed', 'timeout')} killed, "
                f"{report.count('survived')} survived, {report.count('equivalent')} equivalent: "
                f"{report.score:.0%} ({time.monotonic() - start:.0f} s so far)",
                flush=True,
            )
    seconds = time.monotonic() - start
    print(f"\n{'module':<26}{'mutants':>8}{'killed':>8}{'survived':>10}{'equiv':>7}{'score':>8}")
    for r in reports:
        print(
            f"{r.module.path:<26}{len(r.outcomes):>8}{r.count('killed', 'timeout'):>8}"
            f"{r.count('survived', 'error'):>10}{r.count('equivalent'):>7}{r.score:>8.0%}"
        )
    print(f"{seconds:.0f} s")
    out = args.json or (None if args.module else RESULTS)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(as_json(reports, seconds), indent=1) + "\n")
        print(f"wrote {out}")
    return 0 if all(r.score >= args.min_score for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
