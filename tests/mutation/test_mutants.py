"""The mutation tool itself (fast; `make mutation` runs the slow part): which mutants it
makes, and that its configuration still names real functions, tests and mutants."""

from __future__ import annotations

from pathlib import Path

import pytest
from mutation import run
from mutation.mutants import mutants

ROOT = Path(__file__).resolve().parents[2]

SOURCE = '''
LIMIT = 3


def decide(x: int, flag: bool = True, name: str = "n") -> bool:
    """Docstring."""
    total = x + 1
    if x < LIMIT and not flag:
        raise ValueError(f"bad {x + 2}")
    return total is None


def untouched(x):
    return x > 0
'''


def test_each_operator_changes_one_node_and_leaves_strings_signature_and_other_functions_alone() -> None:
    found = {(m.target, m.line, m.original, m.mutated) for m in mutants(SOURCE, ["LIMIT", "decide"])}
    assert found == {
        ("LIMIT", 2, "3", "4"),
        ("LIMIT", 2, "3", "2"),
        ("LIMIT", 2, "3", "0"),
        ("LIMIT", 2, "LIMIT = 3", "pass"),
        ("decide", 7, "x + 1", "x - 1"),
        ("decide", 7, "1", "2"),
        ("decide", 7, "1", "0"),
        ("decide", 7, "total = x + 1", "pass"),
        ("decide", 8, "x < LIMIT and (not flag)", "x < LIMIT or not flag"),
        ("decide", 8, "x < LIMIT", "x <= LIMIT"),
        ("decide", 8, "x < LIMIT", "x >= LIMIT"),
        ("decide", 8, "not flag", "flag"),
        ("decide", 9, "raise ValueError(f'bad {x + 2}')", "pass"),
        ("decide", 10, "total is None", "total is not None"),
        ("decide", 10, "return total is None", "return None"),
    }


def test_a_mutant_is_the_whole_file_with_one_splice() -> None:
    (m,) = [m for m in mutants(SOURCE, ["decide"]) if m.mutated == "x <= LIMIT"]
    assert m.source == SOURCE.replace("if x < LIMIT and", "if (x <= LIMIT) and")
    with pytest.raises(KeyError, match="missing"):
        mutants(SOURCE, ["missing"])


@pytest.mark.parametrize("module", run.MODULES, ids=lambda m: m.name)
def test_the_configuration_names_real_targets_tests_and_equivalents(module: run.Module) -> None:
    source = (ROOT / module.path).read_text()
    keys = {m.key for m in mutants(source, module.targets)}  # raises when a target was renamed
    assert all((ROOT / t).exists() for t in module.tests if t.startswith("tests/"))
    stale = set(run.EQUIVALENT.get(module.name, {})) - keys
    assert not stale, f"equivalent mutants that no longer exist: {stale}"
