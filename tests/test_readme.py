"""The README stays true: its example validates and the commands it names exist."""

import re
from pathlib import Path

import yaml

from modelpress.cli import COMMANDS
from modelpress.validate import check_documents

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_yaml_examples_validate():
    blocks = re.findall(r"```yaml\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no yaml example"
    for block in blocks:
        assert yaml.safe_load(block)["kind"] == "CompressedModel"
        assert check_documents(block, "README.md") == []


def test_readme_commands_exist():
    named = set(re.findall(r"^modelpress (\w+)", README, flags=re.M))
    assert named and named <= set(COMMANDS), named - set(COMMANDS)
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", README, flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"README names `make {target}`"


def test_readme_setup_is_the_two_commands_and_ci_only_runs_make_test():
    """A fresh machine needs nothing but `make demo` / `make test`: CI does not provision on the side."""
    assert re.findall(r"^make (\w+)", README.split("## Two commands")[1].split("##")[0], flags=re.M) == [
        "demo",
        "test",
    ]
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert ci == ["make test"], ci
    makefile = (ROOT / "Makefile").read_text()
    test_rule = re.search(r"^test:(.*)$", makefile, flags=re.M)
    assert test_rule and "system-packages" in test_rule.group(1)
    packages = re.search(r"^SYSTEM_PACKAGES := (.*)$", makefile, flags=re.M)
    assert packages and "prometheus" in packages.group(1).split()
