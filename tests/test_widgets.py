import matplotlib.pyplot as plt

from helpers import widgets


def recorder():
    calls = []

    def draw(size, name):
        calls.append((size, name))
        return plt.figure()

    return draw, calls


def test_headless_draws_once_with_the_initial_values(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    draw, calls = recorder()
    assert widgets.explorer(draw, size=(1, 9, 2), name=["a", "b"]) is None
    assert calls == [(5, "a")]
    assert "static view" in capsys.readouterr().out


def test_interactive_session_gets_live_controls(monkeypatch):
    monkeypatch.delenv("COURSE_HEADLESS", raising=False)
    draw, calls = recorder()
    widget = widgets.explorer(draw, size=(1, 9, 2), name=["a", "b"])
    assert widget is not None and widget.kwargs == {"size": 5, "name": "a"}
    assert calls == [(5, "a")]
