"""A real, offline end-to-end example: an MLP on scikit-learn's bundled digits.

``python -m modelpress.jobs.examples.digits OUT_DIR`` trains it in seconds and writes
everything a CompressedModel needs with file:// URIs (used by ``make demo``):

- ``model.pt2``  the trained model (torch.export, dynamic batch axis)
- ``model.onnx`` the same model as ONNX (input ``input`` [N,64], output ``logits`` [N,10])
- ``val.npz`` / ``calib.npz``  arrays ``x`` float32 [N,64] (pixels scaled to 0..1), ``y`` int64;
  calib.npz is the whole training split: the job fine-tunes and distills on the
  calibration dataset and calibrates static quantization on its first ``samples``
- ``compressedmodel.yaml``  a pipeline recipe with search enabled, output under ``artifacts/``
- ``digits-example.log``  the exporter's notes (opset, torchvision absent): the terminal
  shows only the path of the spec it wrote (``-v`` shows the notes too)

The hidden layers are wide (1024) on purpose: digits needs far less, so structured
pruning can remove most units and the speed-up is real, which is what the example shows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from modelpress.jobs.dataset import Samples

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
N_FEATURES = 64
N_CLASSES = 10
HIDDEN = (1024, 1024)
CALIBRATION_SAMPLES = 200
LOG_NAME = "digits-example.log"


class DigitsMLP(nn.Module):
    """features -> Linear/ReLU blocks -> class logits; takes its input as ``input``."""

    def __init__(self, hidden: tuple[int, ...] = HIDDEN, dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = N_FEATURES
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, N_CLASSES))
        self.net = nn.Sequential(*layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the ONNX input name
        return self.net(input)


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val): a seeded 70/30 split, pixels scaled to 0..1."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    x_tr, x_val, y_tr, y_val = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return x_tr, y_tr, x_val, y_val


def to_samples(x: np.ndarray, y: np.ndarray | None) -> Samples:
    return Samples([{INPUT_NAME: row} for row in x], y)


def train(module: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int, lr: float = 1e-3) -> nn.Module:
    """Plain seeded cross-entropy training (Adam, batch 64)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(module(xt[idx]), yt[idx]).backward()
            opt.step()
    return module.eval()


def train_digits_mlp(
    seed: int = 0, hidden: tuple[int, ...] = HIDDEN, epochs: int = 15
) -> tuple[nn.Module, Samples, Samples]:
    """The trained model plus its train and validation Samples (for tests and benchmarks)."""
    x_tr, y_tr, x_val, y_val = load_digits_split(seed)
    torch.manual_seed(seed)
    model = train(DigitsMLP(hidden), x_tr, y_tr, epochs=epochs, seed=seed)
    return model, to_samples(x_tr, y_tr), to_samples(x_val, y_val)


def build(out_dir: Path, seed: int = 0) -> Path:
    """Train, write model/data/CompressedModel into ``out_dir``; return the yaml path."""
    from modelpress.api import CompressedModel
    from modelpress.jobs.export import to_onnx
    from modelpress.jobs.methods import ModelHandle

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    model, _, _ = train_digits_mlp(seed)
    x_tr, y_tr, x_val, y_val = load_digits_split(seed)

    sample = {INPUT_NAME: torch.from_numpy(x_val[:8])}
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (), sample, dynamic_shapes={INPUT_NAME: {0: batch}})
    torch.export.save(program, out_dir / "model.pt2")

    handle = ModelHandle([INPUT_NAME], [OUTPUT_NAME], module=model, dynamic_axes={INPUT_NAME: {0: "batch"}})
    onnx_handle = to_onnx(handle, {INPUT_NAME: x_val[:8]})
    assert onnx_handle.onnx_model is not None  # to_onnx's result always holds the ONNX graph
    (out_dir / "model.onnx").write_bytes(onnx_handle.onnx_model.SerializeToString())

    np.savez(out_dir / "val.npz", x=x_val, y=y_val)
    np.savez(out_dir / "calib.npz", x=x_tr, y=y_tr)

    manifest = {
        "apiVersion": "modelpress.io/v1alpha1",
        "kind": "CompressedModel",
        "metadata": {"name": "digits-mlp"},
        "spec": {
            "source": {
                "storageUri": (out_dir / "model.pt2").as_uri(),
                "format": "pytorch-export",
                "task": "classification",
            },
            "compression": {
                "steps": [
                    {"prune": {"structure": "neurons", "sparsity": 0.6, "fineTuneEpochs": 3}},
                    {"quantize": {"mode": "dynamic"}},
                ],
                "search": {"enabled": True, "maxTrials": 6, "objective": "latency"},
            },
            "validation": {
                "dataset": {"storageUri": (out_dir / "val.npz").as_uri(), "format": "npz"},
                "calibration": {
                    "storageUri": (out_dir / "calib.npz").as_uri(),
                    "format": "npz",
                    "samples": CALIBRATION_SAMPLES,
                },
                "metric": "accuracy",
                "maxAccuracyDrop": {"absolute": 0.01},
                "batchSize": 64,
            },
            "output": {"storageUri": (out_dir / "artifacts").as_uri() + "/"},
        },
    }
    CompressedModel.model_validate(manifest)  # never write an example the API would reject
    path = out_dir / "compressedmodel.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelpress.jobs.examples.digits", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out_dir", type=Path, help="directory to write the model, data and compressedmodel.yaml into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-v", "--verbose", action="store_true", help="show the exporter's log here too")
    args = parser.parse_args(argv)
    from modelpress.jobs.entrypoint import configure_logging

    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / LOG_NAME).write_text("")
    configure_logging(args.out_dir / LOG_NAME, console=args.verbose)  # after torch's import: its loggers too
    print(build(args.out_dir, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
