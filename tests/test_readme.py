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
