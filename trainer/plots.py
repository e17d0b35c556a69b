"""PNG plots of an evaluation: ROC curves, confusion matrices, training curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: dict, out: Path) -> list[Path]:
    from sklearn.metrics import auc, confusion_matrix, roc_curve

    plt = _plt()
    written = []
    for emotion, res in results["emotions"].items():
        y = np.asarray(res["labels"])
        fig, ax = plt.subplots(figsize=(5, 5))
        for name, scores in res["scores"].items():
            if len(np.unique(y)) == 2:
                fpr, tpr, _ = roc_curve(y, scores)
                ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.2f})")
        ax.plot([0, 1], [0, 1], "k:", label="chance")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {emotion}")
        ax.legend(fontsize=7, loc="lower right")
        written.append(_save(fig, out / f"roc_{emotion}.png", plt))

        names = list(res["preds"])
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
        for ax, name in zip(axes[0], names):
            cm = confusion_matrix(y, res["preds"][name], labels=[0, 1])
            ax.imshow(cm, cmap="Blues")
            for (i, j), v in np.ndenumerate(cm):
                ax.text(j, i, str(v), ha="center", va="center")
            ax.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="true")
            ax.set_title(name, fontsize=8)
        fig.suptitle(f"confusion matrices: {emotion}")
        written.append(_save(fig, out / f"confusion_{emotion}.png", plt))

    if results.get("curves"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for session, hist in results["curves"].items():
            epochs = [h["epoch"] for h in hist]
            ax1.plot(epochs, [h["loss"] for h in hist], label=session)
            ax2.plot(epochs, [np.nan if h["val_ua"] is None else h["val_ua"] for h in hist], label=session)
        ax1.set(xlabel="epoch", ylabel="training loss", title="training loss per held-out session")
        ax2.set(xlabel="epoch", ylabel="validation UA (six emotions)", title="validation UA")
        ax1.legend(fontsize=7)
        written.append(_save(fig, out / "training_curves.png", plt))
    return written


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
