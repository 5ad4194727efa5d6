"""helpers.train.history: the record of a run, its table, its best epoch and its figure."""
import matplotlib
import matplotlib.colors

from helpers.train.history import History

ROWS = [
    dict(epoch=1, train_loss=1.23456, val_loss=0.9, val_accuracy=0.5, lr=1e-3, seconds=2.04),
    dict(epoch=2, train_loss=0.5, val_loss=0.61234, val_accuracy=0.755, lr=5e-4, seconds=12.36),
    dict(epoch=3, train_loss=0.4, val_loss=0.7, val_accuracy=0.75, lr=2.5e-5, seconds=3.0),
]


def test_the_table_has_one_aligned_line_per_epoch():
    assert str(History(ROWS)) == "\n".join([
        "epoch  train_loss  val_loss  val_acc        lr  seconds",
        "    1      1.2346    0.9000   50.00%  1.00e-03      2.0",
        "    2      0.5000    0.6123   75.50%  5.00e-04     12.4",
        "    3      0.4000    0.7000   75.00%  2.50e-05      3.0",
    ])


def test_a_run_stopped_early_says_since_when_nothing_improved():
    history = History(ROWS, stopped_early=True)
    assert str(history).splitlines()[-1] == "stopped early: no better validation accuracy since epoch 2"
    assert History(ROWS).stopped_early is False


def test_best_epoch_columns_length_and_epochs_since_best():
    history = History(ROWS)
    assert len(history) == 3 and history.best["epoch"] == 2 and history.epochs_since_best() == 1
    assert history.column("lr") == [1e-3, 5e-4, 2.5e-5]
    assert History(ROWS[:2]).epochs_since_best() == 0
    tied = History([dict(ROWS[0], val_accuracy=0.8), dict(ROWS[1], val_accuracy=0.8)])
    assert tied.best["epoch"] == 1 and tied.epochs_since_best() == 1  # a tie is no improvement
    assert History().rows == [] and len(History()) == 0


def test_the_figure_shows_both_losses_and_the_validation_accuracy_per_epoch():
    matplotlib.use("Agg")
    figure = History(ROWS).plot(title="tiny run")
    loss, accuracy = figure.axes
    left, right = loss.get_position(), accuracy.get_position()
    assert left.y0 == right.y0 and left.x1 < right.x0  # side by side
    assert tuple(figure.get_size_inches()) == (9, 3.2) and figure._suptitle.get_text() == "tiny run"
    assert [(list(line.get_xdata()), list(line.get_ydata()), line.get_label(), line.get_marker())
            for line in loss.lines] == [([1, 2, 3], [1.23456, 0.5, 0.4], "train", "o"),
                                        ([1, 2, 3], [0.9, 0.61234, 0.7], "validation", "o")]
    assert (loss.get_xlabel(), loss.get_ylabel(), loss.get_title()) == ("epoch", "loss", "loss")
    assert [text.get_text() for text in loss.get_legend().get_texts()] == ["train", "validation"]
    [line] = accuracy.lines
    assert (list(line.get_xdata()), list(line.get_ydata()), line.get_marker()) == ([1, 2, 3], [0.5, 0.755, 0.75], "o")
    assert matplotlib.colors.same_color(line.get_color(), "C2")
    assert (accuracy.get_xlabel(), accuracy.get_ylabel(), accuracy.get_title()) == (
        "epoch", "accuracy", "validation accuracy")
    assert History(ROWS).plot()._suptitle is None  # no title asked for, none drawn
