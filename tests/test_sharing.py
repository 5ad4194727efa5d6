"""Sharing a model (lesson 07): the model card, pipeline() round trip, LoRA adapters."""
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessor

from helpers import data, export, freezing, models


def card(**changes):
    values = dict(base_model="google/vit-base-patch16-224-in21k", classes=["brick", "grass"], data="two surfaces",
                  splits={"train": 10, "val": 3, "test": 4}, split_rule="groups kept whole", strategy="lora",
                  test_accuracy=0.75, interval=(0.5, 1.0), ece=0.125, temperature=1.5,
                  per_class="| class | recall |", failure_modes=["grass taken for brick: 1"],
                  settings={"lr": 0.001, "epochs": 3}, limits="one photograph per class")
    return export.ModelCard(**{**values, **changes})


def test_model_card_says_what_the_evaluation_found():
    text = card().to_markdown()
    assert text.startswith("---\nlibrary_name: transformers\npipeline_tag: image-classification\n")
    assert "base_model: google/vit-base-patch16-224-in21k" in text
    for fact in ("75.0%", "[50.0%, 100.0%]", "12.5%", "T = 1.500", "grass taken for brick: 1", "| lr | 0.001 |",
                 "train 10, val 3, test 4", "groups kept whole", "one photograph per class", "two surfaces"):
        assert fact in text, fact


def test_saved_model_round_trips_through_pipeline(tmp_path, tiny_model_dir):
    model, processor = models.load_model(str(tiny_model_dir), [f"c{i}" for i in range(10)])
    spec = data.ImageSpec.from_processor(processor)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    folder = export.save_for_pipeline(model, processor, tmp_path / "shipped", card(classes=list(model.config.id2label.values())))
    assert (folder / "README.md").read_text().startswith("---") and not (tmp_path / ".shipped.partial").exists()
    piped = export.pipeline_predictions(folder, paths)
    ours = [export.classify_file(model, path, data.eval_transform(spec)) for path in paths]
    assert [label for label, _ in piped] == [label for label, _ in ours]
    assert max(abs(p - o) for (_, p), (_, o) in zip(piped, ours)) < 1e-4


def trained_lora(tiny_model_dir, seed):
    model, _ = models.load_model(str(tiny_model_dir), [f"c{i}" for i in range(10)])
    peft_model = freezing.add_lora(model)
    torch.manual_seed(seed)
    with torch.no_grad():  # stands in for training: non-zero adapters and a changed head
        for name, param in peft_model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.5)
    return peft_model.eval()


def test_adapter_reloads_on_its_own_with_its_head_and_two_swap(tmp_path, tiny_model_dir):
    first, second = trained_lora(tiny_model_dir, 1), trained_lora(tiny_model_dir, 2)
    export.save_adapter(first, tmp_path / "a")
    export.save_adapter(second, tmp_path / "b")
    assert export.size_on_disk(tmp_path / "a") < export.size_on_disk(tiny_model_dir) / 3
    base, _ = models.load_model(str(tiny_model_dir), [f"c{i}" for i in range(10)])
    images = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        plain = base(images).logits.clone()
        both = export.load_adapters(base, {"a": tmp_path / "a", "b": tmp_path / "b"})
        assert torch.allclose(both(images).logits, first(images).logits, atol=1e-5)
        assert not torch.allclose(both(images).logits, plain, atol=1e-3)  # the head came back too
        both.set_adapter("b")
        assert torch.allclose(both(images).logits, second(images).logits, atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft asks transformers; add_lora silences it too
def test_an_adapter_without_its_head_is_refused(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model, _ = models.load_model(str(tiny_model_dir), [f"c{i}" for i in range(10)])
    headless = get_peft_model(model, LoraConfig(r=4, target_modules=freezing.LORA_TARGET_MODULES))
    with pytest.raises(ValueError, match="modules_to_save"):
        export.save_adapter(headless, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_processor_fixture_is_what_pipeline_needs(tiny_model_dir):
    assert ViTImageProcessor.from_pretrained(tiny_model_dir).size == {"height": 32, "width": 32}


def test_a_lora_model_ships_merged_and_stays_a_lora_model(tmp_path, tiny_model_dir):
    lora = trained_lora(tiny_model_dir, 3)
    _, processor = models.load_model(str(tiny_model_dir), [f"c{i}" for i in range(10)])
    folder = export.save_for_pipeline(lora, processor, tmp_path / "merged")
    assert any("lora_A" in name for name, _ in lora.named_parameters())  # still adapters, ready to save alone
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    [(label, score)] = export.pipeline_predictions(folder, [path])
    spec = data.ImageSpec.from_processor(processor)
    assert (label, pytest.approx(score, abs=1e-4)) == export.classify_file(lora, path, data.eval_transform(spec))
