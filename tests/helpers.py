"""Helpers shared by test folders: one copy of what several suites need.

Importable as ``helpers``: pyproject's pytest ``pythonpath`` puts ``tests/`` (and
``tests/operator``, for the cluster stand-in) on ``sys.path``, which the importlib
import mode would not do by itself. Heavy imports (torch) stay
inside the functions that need them, so operator-only tests import this cheaply.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Width of the digits MLP the test suites train: seconds on one core, still accurate.
DIGITS_HIDDEN = (64,)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(
    url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None, log: Path | None = None
) -> tuple[int, str]:
    """(status, body) once ``url`` answers without an HTTP error; fails early, with the
    process's log, when ``proc`` exits before that."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            out = log.read_text(errors="replace") if log else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was up:\n{out[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, resp.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def condition(status: Mapping[str, Any], type_: str) -> dict[str, Any]:
    """The condition of ``type_`` in a CompressedModel status (StopIteration if absent)."""
    return next(c for c in status.get("conditions") or [] if c["type"] == type_)


def write_digits(out: Path, *, torch_export: bool = False, calib: bool = False) -> Path:
    """A small trained digits MLP as users would upload it, in ``out``: model.onnx and
    val.npz; with ``torch_export`` also model.pt2, with ``calib`` also calib.npz."""
    import numpy as np
    import torch

    from modelpress.jobs.examples.digits import INPUT_NAME, OUTPUT_NAME, train_digits_mlp
    from modelpress.jobs.export import to_onnx
    from modelpress.jobs.methods import ModelHandle

    module, train, val = train_digits_mlp(seed=0, hidden=DIGITS_HIDDEN, epochs=8)
    x_val = np.stack([f[INPUT_NAME] for f in val.features])
    handle = ModelHandle([INPUT_NAME], [OUTPUT_NAME], module=module, dynamic_axes={INPUT_NAME: {0: "batch"}})
    with torch.no_grad():
        onnx_model = to_onnx(handle, {INPUT_NAME: x_val[:8]}).onnx_model
    (out / "model.onnx").write_bytes(onnx_model.SerializeToString())
    np.savez(out / "val.npz", x=x_val, y=val.labels)
    if torch_export:
        program = torch.export.export(
            module,
            (),
            {INPUT_NAME: torch.from_numpy(x_val[:8])},
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
        )
        torch.export.save(program, out / "model.pt2")
    if calib:
        x_train = np.stack([f[INPUT_NAME] for f in train.features])
        np.savez(out / "calib.npz", x=x_train[:100], y=train.labels[:100])
    return out


# The smallest valid CompressedModel spec (s3:// URIs, never read): for pure API tests.
MINIMAL_SPEC: dict[str, Any] = {
    "source": {"storageUri": "s3://models/m.onnx", "format": "onnx", "task": "classification"},
    "compression": {"steps": [{"quantize": {"mode": "dynamic"}}]},
    "validation": {
        "dataset": {"storageUri": "s3://data/dev.npz", "format": "npz"},
        "metric": "accuracy",
        "maxAccuracyDrop": {"absolute": 0.01},
    },
    "output": {"storageUri": "s3://models/out/"},
}
