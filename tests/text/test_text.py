"""load_jsonl: real tokenization, unpadded samples, labels, and readable errors per line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelpress.jobs.errors import JobInputError
from modelpress.jobs.text import load_jsonl


def write(tmp_path, text: str, name: str = "rows.jsonl"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_rows_are_tokenized_unpadded_with_int_labels(tmp_path, minilm_dir):
    from transformers import AutoTokenizer

    texts = [
        "Why do cats purr?",
        "The river burst its banks after a week of continuous rain, flooding several villages.",
    ]
    path = write(tmp_path, "".join(json.dumps({"text": t, "label": i}) + "\n\n" for i, t in enumerate(texts)))
    samples = load_jsonl(path, minilm_dir)

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir, local_files_only=True)
    assert samples.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    for features, text in zip(samples.features, texts, strict=True):
        np.testing.assert_array_equal(features["input_ids"], tokenizer(text)["input_ids"])
        assert features["input_ids"].dtype == np.int64
        assert features["attention_mask"].sum() == len(features["input_ids"])  # no padding per sample
    assert len(samples.features[0]["input_ids"]) < len(samples.features[1]["input_ids"])
    assert samples.labels.dtype == np.int64 and samples.labels.tolist() == [0, 1]
    assert samples.pad_values["input_ids"] == tokenizer.pad_token_id

    batch, _ = next(samples.batches(2))  # collated to the longest sentence of the batch only
    assert batch["input_ids"].shape == (2, len(samples.features[1]["input_ids"]))
    assert batch["attention_mask"][0].sum() == len(samples.features[0]["input_ids"])


def test_float_labels_and_truncation_to_max_seq_length(tmp_path, minilm_dir):
    long_text = " ".join(["The weather was lovely and we walked along the river."] * 60)
    path = write(
        tmp_path, json.dumps({"text": long_text, "label": 0.5}) + "\n" + json.dumps({"text": "Hi", "label": 2})
    )
    samples = load_jsonl(path, minilm_dir)
    assert samples.labels.dtype == np.float32 and samples.labels.tolist() == [0.5, 2.0]
    # all-MiniLM-L6-v2's sentence_bert_config.json says max_seq_length 256 (sentence-transformers truncates there)
    assert len(samples.features[0]["input_ids"]) == 256


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "fine"}\n{"text": "broken"\n', r"rows\.jsonl:2: not valid JSON"),
        ('{"text": "fine"}\n\n{"txt": "typo"}\n', r'rows\.jsonl:3: missing or empty "text"'),
        ('{"text": "   "}\n', r'rows\.jsonl:1: missing or empty "text"'),
        ('["a list"]\n', r"rows\.jsonl:1: expected an object"),
        ('{"text": "a", "label": 1}\n{"text": "b"}\n', r'rows\.jsonl:2: row has no "label" but others do'),
        ('{"text": "a", "label": "positive"}\n', r'rows\.jsonl:1: "label" must be a number'),
        ('{"text": "a", "label": true}\n', r'rows\.jsonl:1: "label" must be a number'),
        ("\n\n", r"has no rows"),
    ],
)
def test_bad_rows_name_the_line_and_the_fix(tmp_path, minilm_dir, content, message):
    with pytest.raises(JobInputError, match=message) as error:
        load_jsonl(write(tmp_path, content), minilm_dir)
    assert error.value.field == "validation.dataset.storageUri"


def test_non_utf8_file_and_custom_field(tmp_path, minilm_dir):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"text": "café"}\n'.encode("latin-1"))
    with pytest.raises(JobInputError, match="not UTF-8") as error:
        load_jsonl(path, minilm_dir, field="validation.calibration.storageUri")
    assert error.value.field == "validation.calibration.storageUri"
