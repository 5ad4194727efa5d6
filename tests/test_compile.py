"""`fit()` compiled: region by region, the same losses as eager, and the default that a GPU measurement decides."""
import pytest
import torch
import torch.nn.functional as F
from transformers import ViTConfig, ViTForImageClassification

from helpers import data, models, profiles, train

ON_GPU = torch.cuda.is_available()
NEEDS_GPU = pytest.mark.skipif(
    not ON_GPU, reason="needs a CUDA GPU: run in the GPU session (see bench/gpu_throughput.py's docstring)")


def learnable_images(count: int, size: int, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """uint8 images whose brightness gives their class (one of 4): a task a ViT learns in a few dozen steps."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 4
    noise = torch.randint(-40, 40, (count, 3, size, size), generator=generator)
    return (40 + 55 * labels[:, None, None, None] + noise).clamp(0, 255).to(torch.uint8), labels.tolist()


def loss_curve(config: ViTConfig, torch_compile, *, steps: int, batch_size: int, autocast: bool = True) -> list[float]:
    """The loss of each of `steps` steps of `fit()`'s step from the same seed, on the same batches.
    `autocast=False` trains the model without `prepare`'s autocast (float32 on a GPU too)."""
    settings = profiles.resolve("smoke", batch_size=batch_size, lr=1e-3, precision="bf16")
    accelerator = train.make_accelerator(settings)
    train.seed_everything(0)
    model = ViTForImageClassification(config)
    optimizer = train.make_optimizer("adamw", train.parameter_groups(model, settings.weight_decay), settings.lr)
    if autocast:
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model, optimizer = model.to(accelerator.device), accelerator.prepare(optimizer)
    runner = train.maybe_compile(model, torch_compile)
    runner.train()
    images, labels = learnable_images(steps * batch_size, config.image_size)
    spec = data.ImageSpec((config.image_size,) * 2, (0.5,) * 3, (0.5,) * 3)
    batches = train.DeviceImages(images, labels, spec, augment=True).loader(batch_size)
    return [train.train_step(runner, batch, targets, optimizer, None, accelerator, settings.max_grad_norm).item()
            for batch, targets in batches]


def test_compiling_traces_each_encoder_layer_on_its_own_and_the_model_forward_not_at_all():
    graphs = []

    def keep_graph(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch.manual_seed(0)
    model = ViTForImageClassification(models.tiny_vit_config(10))
    runner = train.maybe_compile(model, keep_graph)
    runner.train()
    F.cross_entropy(train.logits_of(runner, torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    attention = [node for graph in graphs for node in graph.graph.nodes
                 if "scaled_dot_product_attention" in str(node.target)]
    # One traced attention call serves the 4 layers; the forward that builds the attention mask is not traced,
    # so no mask reaches scaled_dot_product_attention (a mask rules out flash attention on a GPU).
    assert len(attention) == 1, f"{len(attention)} attention calls traced: the model was compiled whole"
    assert all(node.kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None) is None
               for node in attention)
    assert train.plain_model(train.make_accelerator(profiles.resolve("smoke")), runner) is model


def test_compiled_step_trains_the_same_model_as_the_eager_step_on_a_cpu():
    # aot_eager traces and replays the same operations, so a CPU's float32 curve agrees to rounding.
    config = models.tiny_vit_config(4)
    eager = loss_curve(config, False, steps=12, batch_size=16)
    compiled = loss_curve(config, "aot_eager", steps=12, batch_size=16)
    assert eager[-1] < 0.8 * eager[0], f"the task was not learned: {eager}"
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)


def test_fit_compiled_leaves_the_users_model_in_eval_mode():
    model = ViTForImageClassification(models.tiny_vit_config(4)).train()
    images, labels = learnable_images(24, 32)
    spec = data.ImageSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    train_set, val_set = (train.DeviceImages(images[part], labels[part], spec) for part in (slice(16), slice(16, 24)))
    train.fit(model, train_set, val_set, profiles.resolve("smoke", batch_size=8), epochs=1, progress=False,
              torch_compile="aot_eager")
    assert not any(module.training for module in model.modules())


@NEEDS_GPU
def test_compiled_step_stays_within_bf16_noise_of_the_eager_step_on_a_gpu():
    # 50 steps of a small ViT from one seed. bf16 noise: how far bf16 autocast moves the eager curve from float32.
    config = ViTConfig(image_size=64, patch_size=8, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                       intermediate_size=768, num_labels=4)
    curves = {name: loss_curve(config, compiled, steps=50, batch_size=64, autocast=autocast)
              for name, compiled, autocast in [("float32", False, False), ("eager", False, True),
                                               ("compiled", True, True)]}
    noise = max(abs(a - b) for a, b in zip(curves["eager"], curves["float32"]))
    gap = max(abs(a - b) for a, b in zip(curves["compiled"], curves["eager"]))
    print(f"largest loss difference over 50 steps: compiled vs eager {gap:.4f}, bf16 vs float32 {noise:.4f}")
    assert curves["eager"][-1] < 0.5 * curves["eager"][0], "the task was not learned"
    assert gap <= 2 * noise, f"compiled vs eager {gap:.4f}, more than twice bf16's own noise {noise:.4f}"
