import logging

import pytest
import torch

from helpers import models


def test_local_folder_gets_labels_wired_and_a_new_head(tiny_model_dir):
    model, processor, report = models.load_model_with_report(str(tiny_model_dir), ["cat", "dog", "bird"])
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert model.config.label2id == {"cat": 0, "dog": 1, "bird": 2}
    assert model.classifier.out_features == 3
    assert set(report.resized) == {"classifier.weight", "classifier.bias"}
    assert processor.size == {"height": 32, "width": 32}


def test_same_label_count_keeps_the_pretrained_head(tiny_model_dir):
    first, _ = models.load_model(str(tiny_model_dir), [str(i) for i in range(10)])
    second, _, report = models.load_model_with_report(str(tiny_model_dir), list("abcdefghij"))
    assert report.resized == [] and report.new == []
    assert torch.equal(first.classifier.weight, second.classifier.weight)


def test_random_init_keeps_architecture_but_not_weights(tiny_model_dir):
    pretrained, _ = models.load_model(str(tiny_model_dir), list("ab"))
    torch.manual_seed(1)
    random, _, report = models.load_model_with_report(str(tiny_model_dir), list("ab"), random_init=True)
    assert [n for n, _ in random.named_parameters()] == [n for n, _ in pretrained.named_parameters()]
    assert not torch.equal(random.vit.embeddings.patch_embeddings.projection.weight,
                           pretrained.vit.embeddings.patch_embeddings.projection.weight)
    assert "random init" in report.source


def test_eager_attention_returns_attention_weights(tiny_model_dir):
    model, _ = models.load_model(str(tiny_model_dir), list("ab"), attn_implementation="eager")
    out = model(torch.zeros(1, 3, 32, 32), output_attentions=True)
    assert len(out.attentions) == 4 and out.attentions[0].shape == (1, 4, 65, 65)


def test_offline_hub_id_fails_fast_with_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-cache")
    with pytest.raises(models.ModelUnavailable) as error:
        models.load_model("google/vit-base-patch16-224-in21k", ["a", "b"])
    message = str(error.value)
    assert "not in the local cache" in message and "tiny-vit" in message and message.count(".") <= 3
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelUnavailable, match="not a model folder"):
        models.load_model(str(tmp_path / "empty"), ["a", "b"])


def test_tiny_config_is_the_documented_shape():
    config = models.tiny_vit_config(7)
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers,
            config.num_attention_heads, config.num_labels) == (32, 4, 64, 4, 4, 7)


def test_loading_prints_no_transformers_report_and_restores_logging(tiny_model_dir):
    from transformers.utils import logging as transformers_logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    transformers_logging.add_handler(handler)
    before = transformers_logging.get_verbosity()
    try:
        models.load_model(str(tiny_model_dir), ["a", "b"])  # a new head: transformers would report it
    finally:
        transformers_logging.remove_handler(handler)
    assert not [r for r in records if "LOAD REPORT" in r.getMessage()]
    assert transformers_logging.get_verbosity() == before
