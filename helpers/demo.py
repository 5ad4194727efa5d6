"""A web demo of a shipped classifier (lesson 07): upload a photo, get the top 5 with probabilities and where the
model looked (attention rollout). `launch_demo(folder)` starts it; it needs the optional extra `demo` (Gradio).

    python -c "from helpers.demo import launch_demo; launch_demo('build/my-model/model')"
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch
from PIL import Image, ImageOps

from helpers.attention import attention_rollout, model_attentions, overlay
from helpers.data.photos import to_rgb8
from helpers.data.transforms import ImageSpec, eval_transform
from helpers.models import eval_mode, grid_size, load_model

GRADIO_MISSING = ("The demo needs Gradio, the optional extra `demo`: pip install -e '.[demo]' (Gradio itself asks "
                  "for pillow < 13, so install it in an environment of its own if your pillow is newer).")


class PhotoClassifier:
    """A shipped model folder, loaded once: `top_k(image)` and `explain(image)` for any PIL image (lesson 07)."""

    def __init__(self, folder: str | os.PathLike, device: str = "cpu"):
        from transformers import AutoConfig

        labels = AutoConfig.from_pretrained(str(folder)).id2label
        self.model, processor = load_model(str(folder), [labels[i] for i in sorted(labels)],
                                           attn_implementation="eager")
        self.model.to(device).eval()
        self.spec = ImageSpec.from_processor(processor)

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        return to_rgb8(ImageOps.exif_transpose(image))

    def top_k(self, image: Image.Image, k: int = 5) -> dict[str, float]:
        """The k most probable classes of `image` with their probabilities, most probable first."""
        pixels = eval_transform(self.spec)(self._pixels(image))
        with eval_mode(self.model), torch.inference_mode():
            probs = self.model(pixels[None].to(self.model.device)).logits.float().softmax(-1)[0].cpu()
        values, indices = probs.topk(min(k, len(probs)))
        return {self.model.config.id2label[int(i)]: float(v) for v, i in zip(values, indices)}

    def explain(self, image: Image.Image) -> np.ndarray:
        """`image` at the model's input size with its attention rollout laid over it, H x W x 3 in [0, 1]."""
        resized, weights = model_attentions(self.model, self._pixels(image), self.spec)
        grid = grid_size(self.spec.size, self.model.config.patch_size)
        return overlay(resized, attention_rollout(tuple(weights[:, None]), grid=grid))


def build_demo(folder: str | os.PathLike, device: str = "cpu"):
    """A Gradio interface for the model in `folder`: an image in, the top 5 and the attention overlay out (lesson 07)."""
    if importlib.util.find_spec("gradio") is None:
        raise ModuleNotFoundError(GRADIO_MISSING)
    import gradio as gr

    classifier = PhotoClassifier(folder, device)

    def classify(image):
        if image is None:
            raise gr.Error("Upload a photo first.")
        return classifier.top_k(image), classifier.explain(image)

    return gr.Interface(classify, gr.Image(type="pil", label="your photo"),
                        [gr.Label(num_top_classes=5, label="top 5"), gr.Image(label="where the model looked")],
                        title="Which class is it?", api_name="classify", flagging_mode="never")


def launch_demo(folder: str | os.PathLike, host: str = "127.0.0.1", port: int | None = None, **launch_options):
    """Start the demo of the model in `folder` on http://host:port (lesson 07); returns the running app
    (`.close()` stops it).

    Listens on this machine only unless you pass another `host`. Extra options go to `gradio.Blocks.launch`
    (e.g. `prevent_thread_lock=True` to keep a notebook cell free).
    """
    app = build_demo(folder)
    app.launch(server_name=host, server_port=port, **launch_options)
    return app
