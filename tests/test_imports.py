"""The control plane stays torch-free: the operator image has no ML stack."""

import subprocess
import sys

PROBE = """
import importlib, pkgutil, sys
import modelpress.api, modelpress.cli, modelpress.summary, modelpress.operator
mods = ["modelpress.api", "modelpress.cli", "modelpress.summary"]
for info in pkgutil.walk_packages(modelpress.operator.__path__, "modelpress.operator."):
    importlib.import_module(info.name)
    mods.append(info.name)
heavy = sorted(m for m in ("torch", "onnxruntime", "onnx", "transformers") if m in sys.modules)
print(len(mods), ",".join(heavy))
"""


def test_operator_and_api_modules_import_without_the_ml_stack():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    count, heavy = int(out[0]), (out[1] if len(out) > 1 else "")
    assert count >= 4, "the probe found no operator modules"
    assert heavy == "", f"importing the operator pulled in: {heavy}"
