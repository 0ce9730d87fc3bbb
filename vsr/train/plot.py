"""A PNG plot of the training loss and validation PSNR (matplotlib, headless)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from vsr.io.output import store_file


def plot_metrics(csv_path: Path, png_path: Path) -> Path | None:
    """Plot loss (log scale) and validation PSNR against step; None if there is nothing yet."""
    if not csv_path.exists():
        return None
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in rows if r.get("loss")]
    loss = [float(r["loss"]) for r in rows if r.get("loss")]
    val = [(int(r["step"]), float(r["val_psnr"])) for r in rows if r.get("val_psnr")]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, loss, color="tab:blue", label="training loss")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (L1 primal + lambda dual)", color="tab:blue")
    if val:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in val], [p for _, p in val], "o-", color="tab:red",
                 label="validation PSNR")
        ax2.set_ylabel("validation PSNR (dB, Y)", color="tab:red")
    ax.set_title(csv_path.parent.name)
    fig.tight_layout()
    image = io.BytesIO()
    try:
        fig.savefig(image, format="png")
    finally:
        plt.close(fig)
    store_file(png_path, image.getvalue())  # a full disk: no half-written plot left behind
    return png_path
