"""The control plane stays torch-free: the operator image has no ML stack."""

import subprocess
import sys
from pathlib import Path

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


def test_repo_root_operator_directory_never_shadows_the_standard_library():
    """`python -m ...` from a checkout puts the repo root first on sys.path; operator/
    must stay a plain (PEP 420) directory so the stdlib's `operator` always wins.
    -S skips site, as a fresh venv would, so nothing has imported `operator` yet."""
    root = Path(__file__).resolve().parents[1]
    probe = f"import sys; sys.path.insert(0, {str(root)!r}); import operator; print(operator.__file__)"
    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, check=True).stdout
    assert not out.strip().startswith(str(root)), out


def test_core_and_operator_work_without_rich():
    """rich is in the jobs extra (`modelpress run`'s progress bars): the core CLI and the
    operator must neither import it nor need it."""
    root = Path(__file__).resolve().parents[1]
    probe = PROBE.replace(
        "import importlib, pkgutil, sys", "import importlib, pkgutil, sys\nsys.modules['rich'] = None"
    )
    probe += (
        "from modelpress.cli import main\n"
        f"assert main(['validate', {str(root / 'examples' / 'quantize-dynamic.yaml')!r}]) == 0\n"
        "assert main(['crd', '-o', 'json']) == 0\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
