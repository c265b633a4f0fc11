"""The one place the web service meets the inference core.

Everything the HTTP layer needs from a model goes through `Engine`: records for uploaded
bytes (the same records as `brainmri predict --json`), the Grad-CAM overlay PNG and a summary
of the model for `/v1/model`. Keeping it in one small module means the service follows the
inference core with a one-line change when that core changes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainmri.data.images import resize_square
from brainmri.errors import BrainMRIError, RejectedInput
from brainmri.infer.core import load_for_inference
from brainmri.infer.inputs import auto_crop, load_plane

Record = dict[str, Any]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Engine:
    """A loaded model answering for uploaded bytes (thread-safe for concurrent `predict`)."""

    def __init__(self, model: str | Path | None = None, device: str | None = None):
        from brainmri.model.checkpoint import shipped_model_path

        self.path = Path(model) if model else shipped_model_path()
        self.loaded = load_for_inference(self.path, device or "cpu")
        self.meta: dict[str, Any] = self.loaded.meta
        self.class_names: list[str] = self.loaded.class_names
        self.sha256 = file_sha256(self.path)
        self.runtime = "torch"

    def predict(self, items: list[tuple[str, bytes]]) -> list[Record]:
        """One record per (name, bytes), in order; unreadable inputs get status "error"."""
        records: list[Record] = []
        planes, ok = [], []
        for i, (name, data) in enumerate(items):
            records.append(_record(name))
            try:
                gray, cropped = auto_crop(load_plane(data, name), "auto")
                planes.append(resize_square(np.ascontiguousarray(gray), self.loaded.image_size))
                records[i]["cropped"] = cropped
                ok.append(i)
            except RejectedInput as exc:
                records[i].update(status="rejected", reason=str(exc))
            except BrainMRIError as exc:
                records[i].update(status="error", reason=str(exc))
        if planes:
            probs = self.loaded.probs(torch.from_numpy(np.stack(planes)[:, None]))
            for i, row in zip(ok, probs.tolist(), strict=True):
                k = int(np.argmax(row))
                records[i].update(
                    status="ok",
                    label=self.class_names[k],
                    probability=round(row[k], 6),
                    probabilities={
                        n: round(v, 6) for n, v in zip(self.class_names, row, strict=True)
                    },
                )
        return records

    def explain(self, name: str, data: bytes) -> tuple[Record, bytes | None]:
        """(record, overlay PNG); no PNG unless the record's status is "ok"."""
        raise BrainMRIError("Grad-CAM is not available in this build")

    def describe(self) -> dict[str, Any]:
        """Model summary for /v1/model: classes, sha256, recipe summary, model-card figures."""
        recipe = self.meta.get("recipe", {})
        model = recipe.get("model", {})
        info = self.meta.get("info", {})
        figures = {
            k: info[k]
            for k in ("val_loss", "val_acc", "val_errors", "temperature", "train_wall_seconds")
            if k in info
        }
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "runtime": self.runtime,
            "class_names": self.class_names,
            "image_size": self.loaded.image_size,
            "recipe": {
                "name": recipe.get("name"),
                "backbone": model.get("backbone"),
                "ensemble": recipe.get("ensemble", 1),
                "image_size": recipe.get("data", {}).get("image_size"),
                "intensity": recipe.get("data", {}).get("intensity"),
            },
            "figures": figures,
            "guard": self.meta.get("guard"),
            "shipped": info.get("shipped"),
        }


def _record(name: str) -> Record:
    return {
        "path": name,
        "status": "error",
        "reason": None,
        "label": None,
        "probability": None,
        "probabilities": {},
        "ood_score": None,
        "cropped": False,
    }

