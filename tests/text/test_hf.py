"""load_hf_model: sentence embeddings like sentence-transformers, classification logits, refusals."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from modelpress.jobs.errors import JobInputError
from modelpress.jobs.hf import load_hf_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def test_minilm_embeddings_match_sentence_transformers(
    minilm, minilm_dir, fidelity_samples, torch_embeddings, sentences, rowwise_cosine
):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_dir), device="cpu").encode(
        sentences[: len(fidelity_samples)], batch_size=16, convert_to_numpy=True
    )
    assert minilm.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert minilm.output_names == ["sentence_embedding"]
    assert minilm.dynamic_axes["input_ids"] == {0: "batch", 1: "sequence"}
    assert torch_embeddings.shape == (len(fidelity_samples), 384)
    assert rowwise_cosine(torch_embeddings, reference).min() > 0.9999
    np.testing.assert_allclose(np.linalg.norm(torch_embeddings, axis=1), 1.0, atol=1e-5)  # Normalize module listed


def test_padding_does_not_change_a_sentence_embedding(minilm, tokenize):
    """Mean pooling must ignore pad tokens: a short sentence alone == the same sentence padded in a batch."""
    samples = tokenize(["Cats sleep a lot.", "The committee approved the new budget after a long and heated debate."])
    batch, _ = next(samples.batches(2))
    assert batch["attention_mask"][0].min() == 0  # the short one really is padded
    with torch.no_grad():
        padded = minilm.module(**{k: torch.from_numpy(v) for k, v in batch.items()})[0]
        alone = minilm.module(**{k: torch.from_numpy(v[None]) for k, v in samples.features[0].items()})[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


def test_pooling_and_normalize_follow_modules_json(minilm_dir, tmp_path, tokenize):
    """Without a Normalize module and with CLS pooling the module must change behaviour accordingly."""
    model_dir = tmp_path / "cls-model"
    shutil.copytree(minilm_dir, model_dir)
    modules = [m for m in json.loads((model_dir / "modules.json").read_text()) if not m["type"].endswith("Normalize")]
    (model_dir / "modules.json").write_text(json.dumps(modules))
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling))

    handle = load_hf_model(model_dir, "embedding")
    batch, _ = next(tokenize(["A family of ducks crossed the road."]).batches(1))
    inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
    with torch.no_grad():
        embedding = handle.module(**inputs)
        cls = handle.module.encoder(**inputs).last_hidden_state[:, 0]
    torch.testing.assert_close(embedding, cls)
    assert abs(float(embedding.norm()) - 1.0) > 0.1  # not normalized any more


def test_ambiguous_pooling_config_is_refused(minilm_dir, tmp_path):
    model_dir = tmp_path / "two-poolings"
    shutil.copytree(minilm_dir, model_dir)
    config_file = model_dir / "1_Pooling" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "pooling_mode_max_tokens": True}))
    with pytest.raises(JobInputError, match="exactly one of pooling_mode_"):
        load_hf_model(model_dir, "embedding")


def tiny_bert_dir(path: Path, minilm_dir: Path, num_labels: int = 3) -> Path:
    """A small randomly initialised BERT classifier saved as safetensors, with MiniLM's tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    BertForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir / name, path / name)
    return path


def test_classification_gives_logits_and_exports(minilm_dir, tmp_path, tokenize, run_onnx):
    from modelpress.jobs.export import to_onnx

    handle = load_hf_model(tiny_bert_dir(tmp_path / "bert", minilm_dir), "classification")
    assert handle.output_names == ["logits"]
    samples = tokenize(["Is it safe to drink tap water in Mexico City?", "Why do cats purr?", "The shop is closed."])
    batch, _ = next(samples.batches(3))
    with torch.no_grad():
        logits = handle.module(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
    assert logits.shape == (3, 3)
    exported = to_onnx(handle, batch)
    np.testing.assert_allclose(run_onnx(exported.onnx_model, samples, batch_size=2), logits, atol=1e-4)


class Boom:
    """Unpickling this creates a marker file: proof that a loader executed the pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_refused_without_unpickling(minilm_dir, tmp_path):
    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    shutil.copy(minilm_dir / "config.json", model_dir / "config.json")
    marker = tmp_path / "unpickled"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(Boom(marker)))
    with pytest.raises(JobInputError, match=r"pytorch_model\.bin.*refused") as error:
        load_hf_model(model_dir, "embedding")
    assert error.value.field == "source.storageUri"
    assert "safe_serialization=True" in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("not a directory"), "is not a directory"),
        (lambda p: p.mkdir(), "has no config.json"),
    ],
)
def test_not_a_model_directory_is_refused(tmp_path, make, message):
    path = tmp_path / "model"
    make(path)
    with pytest.raises(JobInputError, match=message):
        load_hf_model(path, "embedding")


def test_unknown_task_names_the_field(minilm_dir):
    with pytest.raises(JobInputError) as error:
        load_hf_model(minilm_dir, "segmentation")
    assert error.value.field == "source.task"
