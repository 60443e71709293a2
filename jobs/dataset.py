"""In-memory samples shared by measurement, calibration, fine-tuning and distillation.

A dataset is a list of samples, each a dict of model-input name -> array *without*
the batch axis, plus optional labels. Batches are collated on demand and padded only
to the longest sample of that batch, so text latency is measured on unpadded
sequences as users send them, and tabular data collates with no padding at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Samples:
    features: list[dict[str, np.ndarray]]
    labels: np.ndarray | None = None
    # Pad value per input name for variable-length inputs (default 0).
    pad_values: dict[str, int | float] = field(default_factory=dict)
    # Dataset column name -> its value per sample (not a model input): what validation.slices
    # by column cut the samples by.
    groups: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.features):
            raise ValueError(f"{len(self.labels)} labels for {len(self.features)} samples")
        for name, values in self.groups.items():
            if len(values) != len(self.features):
                raise ValueError(f"{len(values)} values of {name!r} for {len(self.features)} samples")

    def __len__(self) -> int:
        return len(self.features)

    @property
    def input_names(self) -> list[str]:
        return list(self.features[0]) if self.features else []

    def take(self, n: int) -> Samples:
        """The first ``n`` samples (deterministic: calibration uses ``samples`` of them)."""
        labels = None if self.labels is None else self.labels[:n]
        groups = {name: values[:n] for name, values in self.groups.items()}
        return Samples(self.features[:n], labels, self.pad_values, groups)

    def split(self, fraction: float, seed: int = 0) -> tuple[Samples, Samples]:
        """A seeded shuffle split, e.g. train/held-out for fine-tuning."""
        order = np.random.default_rng(seed).permutation(len(self))
        cut = int(round(len(self) * fraction))
        return self._subset(order[:cut]), self._subset(order[cut:])

    def _subset(self, idx: np.ndarray) -> Samples:
        labels = None if self.labels is None else self.labels[idx]
        groups = {name: values[idx] for name, values in self.groups.items()}
        return Samples([self.features[i] for i in idx], labels, self.pad_values, groups)

    def batches(self, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Collated (inputs, labels) batches in order; the last one may be short."""
        for start in range(0, len(self), batch_size):
            chunk = self.features[start : start + batch_size]
            labels = None if self.labels is None else self.labels[start : start + batch_size]
            yield collate(chunk, self.pad_values), labels


def collate(
    chunk: list[dict[str, np.ndarray]], pad_values: dict[str, int | float] | None = None
) -> dict[str, np.ndarray]:
    """Stack samples into a batch, right-padding ragged inputs to the batch maximum."""
    pad_values = pad_values or {}
    out: dict[str, np.ndarray] = {}
    for name in chunk[0]:
        arrays = [s[name] for s in chunk]
        shapes = {a.shape for a in arrays}
        if len(shapes) == 1:
            out[name] = np.stack(arrays)
            continue
        target = tuple(max(dim) for dim in zip(*(a.shape for a in arrays), strict=True))
        batch = np.full((len(arrays), *target), pad_values.get(name, 0), dtype=arrays[0].dtype)
        for i, a in enumerate(arrays):
            corner: tuple[int | slice, ...] = (i, *(slice(0, d) for d in a.shape))
            batch[corner] = a
        out[name] = batch
    return out
