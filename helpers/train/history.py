"""`History`: the per-epoch record of a `fit()` run, with its plot (lesson 05)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class History:
    """Per-epoch records of a run: epoch, train_loss, val_loss, val_accuracy, lr, seconds (lesson 05)."""

    rows: list[dict] = field(default_factory=list)
    stopped_early: bool = False  # early stopping ended the run before its last epoch

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list:
        return [row[name] for row in self.rows]

    @property
    def best(self) -> dict:
        """The row with the highest validation accuracy."""
        return max(self.rows, key=lambda row: row["val_accuracy"])

    def __str__(self) -> str:
        header = "epoch  train_loss  val_loss  val_acc        lr  seconds"
        lines = [
            f"{r['epoch']:>5}  {r['train_loss']:>10.4f}  {r['val_loss']:>8.4f}  {r['val_accuracy']:>7.2%}"
            f"  {r['lr']:>8.2e}  {r['seconds']:>7.1f}"
            for r in self.rows
        ]
        if self.stopped_early:
            lines.append(f"stopped early: no better validation accuracy since epoch {self.best['epoch']}")
        return "\n".join([header, *lines])

    def epochs_since_best(self) -> int:
        """Epochs run after the one with the best validation accuracy (0 when the last is the best)."""
        return self.rows[-1]["epoch"] - self.best["epoch"]

    def plot(self, title: str = ""):
        """Loss and validation accuracy per epoch, as a matplotlib Figure."""
        import matplotlib.pyplot as plt

        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
        epochs = self.column("epoch")
        ax_loss.plot(epochs, self.column("train_loss"), marker="o", label="train")
        ax_loss.plot(epochs, self.column("val_loss"), marker="o", label="validation")
        ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
        ax_loss.legend()
        ax_acc.plot(epochs, self.column("val_accuracy"), marker="o", color="C2")
        ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig
