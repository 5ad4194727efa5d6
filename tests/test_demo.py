"""The demo (helpers.demo): top 5 and attention overlay in plain Python; the Gradio app over HTTP where Gradio is."""
import importlib.util
import socket

import numpy as np
import pytest
from PIL import Image

from helpers import demo, export, models


@pytest.fixture
def shipped(tmp_path, tiny_model_dir):
    model, processor = models.load_model(str(tiny_model_dir), [f"c{i}" for i in range(10)])
    return export.save_for_pipeline(model, processor, tmp_path / "shipped")


def photo(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
    return path


def test_top5_matches_the_pipeline_and_the_overlay_is_an_image(tmp_path, shipped):
    classifier = demo.PhotoClassifier(shipped)
    path = photo(tmp_path / "p.png")
    with Image.open(path) as image:
        top5 = classifier.top_k(image)
        overlay = classifier.explain(image)
    assert len(top5) == 5 and list(top5.values()) == sorted(top5.values(), reverse=True) and sum(top5.values()) <= 1
    [(label, score)] = export.pipeline_predictions(shipped, [path])
    assert next(iter(top5)) == label and abs(top5[label] - score) < 1e-3
    assert overlay.shape == (32, 32, 3) and 0 <= overlay.min() and overlay.max() <= 1


@pytest.mark.skipif(importlib.util.find_spec("gradio") is not None, reason="Gradio is installed here")
def test_without_gradio_the_demo_says_how_to_get_it(shipped):
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[demo\]'"):
        demo.build_demo(shipped)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="the optional extra `demo` (Gradio) is absent")
def test_the_app_classifies_a_file_through_its_http_api(tmp_path, shipped):
    from gradio_client import Client, handle_file

    port = free_port()
    app = demo.launch_demo(shipped, port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        label, overlay_file = client.predict(handle_file(str(photo(tmp_path / "q.png", 1))), api_name="/classify")
        [(expected, _)] = export.pipeline_predictions(shipped, [tmp_path / "q.png"])
        assert label["label"] == expected and len(label["confidences"]) == 5
        assert Image.open(overlay_file).size == (32, 32)
    finally:
        app.close()
