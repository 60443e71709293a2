#!/usr/bin/env bash
# Build benchmarks/anchor/.venv: sentence-transformers + Optimum (ORTQuantizer) with their
# own transformers pin. torch is not installed again (PyPI's default wheel is the multi-GB
# CUDA build): a .pth file appends the project venv's site-packages *after* this venv's own,
# so the anchor sees its own transformers/onnxruntime first and borrows torch from .venv.
# pip never uninstalls from a path outside the active environment, so .venv stays intact.
set -euo pipefail
# Run from here: the repo root holds operator/, which would shadow the standard library.
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"
project_site="$("$root/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
python="${PYTHON:-python3}"
[ -x "$here/.venv/bin/python" ] || "$python" -m venv "$here/.venv"
anchor_site="$("$here/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$project_site" > "$anchor_site/zz_modelpress_project_venv.pth"
"$here/.venv/bin/python" -m pip install --disable-pip-version-check -q -c "$root/constraints.txt" -r "$here/requirements.txt"
"$here/.venv/bin/python" -c 'import optimum.onnxruntime, sentence_transformers, transformers, torch; print("anchor venv ready: sentence-transformers", sentence_transformers.__version__, "transformers", transformers.__version__, "torch", torch.__version__)'
