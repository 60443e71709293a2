"""Fixtures for operator tests: an emulated cluster and the operator running against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster
from helpers import write_digits


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path) as c:
        yield c


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained digits MLP as model.onnx plus val.npz (what users would upload)."""
    return write_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(autouse=True)
def _quick_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short latency sampling in the job processes: these tests check behaviour, not speed."""
    monkeypatch.setenv("MODELPRESS_LATENCY_BUDGET_S", "0.05")
