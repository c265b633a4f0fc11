"""Per-epoch records of a run (rank 0 only): metrics.csv, TensorBoard scalars, a console line."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tqdm import tqdm

from brainmri.model.checkpoint import atomic_write

CSV_FIELDS = [
    "stage",
    "epoch",
    "stage_epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "seconds",
    "images_per_s",
]


class RunLog:
    """metrics.csv (one row per finished epoch) and TensorBoard; inert on ranks other than 0."""

    def __init__(self, run_dir: Path, active: bool, epochs_done: int) -> None:
        self.active = active
        self.csv_path = run_dir / "metrics.csv"
        self.writer = None
        if not active:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        if not self.csv_path.exists():
            with self.csv_path.open("w", newline="") as f:
                csv.writer(f).writerow(CSV_FIELDS)
        else:  # resumed: rows of epochs after the last checkpoint are redone
            truncate_metrics(self.csv_path, epochs_done)
            for stale in run_dir.rglob(".*.tmp"):  # left by a kill inside atomic_write
                stale.unlink()

    def epoch(
        self, stage: str, epoch: int, stage_epoch: int, of: int, fig: dict, note: str
    ) -> None:
        if not self.active:
            return
        row = [
            stage, epoch, stage_epoch, f"{fig['lr']:.6g}", f"{fig['train_loss']:.5f}",
            f"{fig['train_acc']:.5f}", f"{fig['val_loss']:.5f}", f"{fig['val_acc']:.5f}",
            f"{fig['seconds']:.1f}", f"{fig['images_per_s']:.2f}",
        ]  # fmt: skip
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow(row)
        for key, name in (
            ("train_loss", "loss/train"),
            ("val_loss", "loss/val"),
            ("train_acc", "acc/train"),
            ("val_acc", "acc/val"),
            ("lr", "lr"),
            ("train_cam_outside", "cam_outside/train"),
            ("train_cam_apart", "cam_apart/train"),
        ):
            if key in fig:
                self.writer.add_scalar(name, fig[key], epoch)
        cam, short = fig.get("train_cam_outside"), fig.get("train_cam_apart")
        tqdm.write(
            f"  epoch {epoch:3d} [{stage} {stage_epoch}/{of}] lr {fig['lr']:.2e}  "
            f"loss {fig['train_loss']:.4f} acc {fig['train_acc']:.4f}  "
            f"val_loss {fig['val_loss']:.4f} val_acc {fig['val_acc']:.4f}  "
            + (f"map outside the head {cam:.3f}  " if cam is not None else "")
            + (f"maps' shortfall from the margin {short:.3f}  " if short is not None else "")
            + f"{fig['seconds']:.0f}s {fig['images_per_s']:.1f} img/s{note}"
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def truncate_metrics(csv_path: Path, epochs_done: int) -> None:
    """Drop rows logged after the last checkpoint (a kill between the CSV row and last.pt)."""
    rows = list(csv.reader(csv_path.open(newline="")))
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[1]) <= epochs_done]
    buf = io.StringIO()
    csv.writer(buf).writerows(keep)
    atomic_write(csv_path, lambda tmp: tmp.write_text(buf.getvalue()))
