"""The one place the web service meets the inference core.

Everything the HTTP layer needs from a model goes through `Engine`: records for uploaded
bytes (the same records as `brainmri predict --json`, with its `--tta` and `--crop`), the
Grad-CAM overlay PNG (with `brainmri explain`'s `--class`, `--method` and `--crop`) and a
summary of the model for `/v1/model`. Keeping it in one small module means the service follows
the inference core with a one-line change when that core changes.

On a CPU without a GPU stack the classifier runs on ONNX Runtime and nothing here imports
PyTorch until the first `explain` (Grad-CAM needs gradients, so the PyTorch model): the
service starts sooner and in a quarter of the memory (docs/RESULTS.md §11.5). TTA views
(`tta` > 1) import it too, when asked for.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from brainmri.errors import BrainMRIError
from brainmri.infer.core import Classifier, load_for_inference
from brainmri.infer.records import (
    check_crop_mode,
    check_tta,
    failed_record,
    prepare_bytes,
    scored_record,
)

Record = dict[str, Any]


class Prepared(NamedTuple):
    """One decoded upload waiting for the model: its plane (None when it failed, then `failed`
    is its record), whether it was cropped, and the options it was asked with."""

    name: str
    plane: np.ndarray | None
    cropped: bool
    failed: Record | None
    crop: str = "auto"
    tta: int = 1


SITE_WINDOW = 200
"""Uploads the service's site check looks back over (`/v1/site`, infer/site_check.py)."""


class Engine:
    """A loaded model answering for uploaded bytes (`predict` and `explain` may run at once)."""

    def __init__(
        self, model: str | Path | None = None, runtime: str = "auto", threads: int | None = None
    ):
        self.classifier = Classifier(model, runtime=runtime, threads=threads)
        self.path = self.classifier.path
        self.meta: dict[str, Any] = self.classifier.meta
        self.class_names = self.classifier.class_names
        self.sha256 = self.classifier.sha256
        self.runtime = self.classifier.runtime
        self._cam_model: Any = None
        self._cam_lock = threading.Lock()
        self.recent: deque[float] = deque(maxlen=SITE_WINDOW)  # OOD scores of the last uploads

    def prepare(self, name: str, data: bytes, crop: str = "auto", tta: int = 1) -> Prepared:
        """Decode and check one upload (`crop`: auto | on | off, as `brainmri predict --crop`;
        `tta`: the views `classify` will average, 1 to 5, as `--tta`). A bad `crop` or `tta`
        raises BrainMRIError; a bad upload gives a Prepared with its failed record. Thread-safe;
        the service runs it as uploads arrive, beside the model."""
        crop, tta = check_crop_mode(crop), check_tta(tta)
        try:
            plane, cropped = prepare_bytes(data, name, self.classifier.image_size, crop)
        except BrainMRIError as exc:
            return Prepared(name, None, False, failed_record(name, exc), crop, tta)
        return Prepared(name, plane, cropped, None, crop, tta)

    def classify(self, items: list[Prepared], remember: bool = True) -> list[Record]:
        """One record per prepared upload, in order: the same records as
        `Classifier.predict_bytes` with the upload's `tta` and `crop` (and so `brainmri predict
        --json`). The planes asked with the same `tta` run as one batch (one model call per
        `tta` in `items`; the service's default, 1, for most). remember: count their OOD
        scores in the site check's window (an explained upload counts once)."""
        clf = self.classifier
        records = [item.failed for item in items]
        by_tta: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            if item.plane is not None:
                by_tta.setdefault(item.tta, []).append(i)
        for tta, kept in by_tta.items():
            out = clf.run(np.stack([items[i].plane for i in kept])[:, None], tta)
            probs = out["probs"].tolist()
            scores = out["ood_score"].tolist() if out["ood_score"] is not None else None
            for j, i in enumerate(kept):
                score = scores[j] if scores is not None else None
                records[i] = scored_record(
                    items[i].name, probs[j], clf.class_names, score, clf.ood_threshold,
                    items[i].cropped, clf.min_confidence,
                )  # fmt: skip
        done = [
            {**r, "model_sha256": self.sha256, "runtime": self.runtime, "tta": item.tta,
             "crop": item.crop, "min_confidence": clf.min_confidence}
            for r, item in zip(records, items, strict=True) if r is not None
        ]  # fmt: skip
        if remember:
            self.recent.extend(r["ood_score"] for r in done if r["ood_score"] is not None)
        return done

    def site_status(self) -> dict[str, Any]:
        """The batch site check over the last SITE_WINDOW scored uploads: do they, as a whole,
        look like the images the model was checked on? `shifted` is None until enough came."""
        res = self.classifier.site_check(list(self.recent))  # a copy: uploads go on meanwhile
        return {"window": SITE_WINDOW, "scored": len(self.recent),
                "shifted": None if res is None else res["shifted"],
                "share_above_reference": None if res is None else res["share"],
                "p_value": None if res is None else res["p_value"]}  # fmt: skip

    def predict(
        self, items: list[tuple[str, bytes]], tta: int = 1, crop: str = "auto"
    ) -> list[Record]:
        """Records for (name, bytes) uploads: `prepare` each, then `classify` them together."""
        return self.classify([self.prepare(name, data, crop, tta) for name, data in items])

    def explain(
        self,
        name: str,
        data: bytes,
        method: str = "gradcam",
        class_name: str | None = None,
        crop: str = "auto",
    ) -> tuple[Record, bytes | None]:
        """(record, overlay PNG: Grad-CAM or occlusion); no PNG unless status "ok". The map is
        of `class_name` when given (as `brainmri explain --class`: the caption then shows the
        model's own answer beside it), else of the predicted class; `crop` as `prepare`. The
        upload is decoded and classified once: the caption shows the record's probabilities.
        The first call loads PyTorch and the PyTorch model (seconds); later calls reuse them."""
        if class_name is not None and class_name not in self.class_names:
            raise BrainMRIError(
                f"unknown class {class_name!r} (one of {', '.join(self.class_names)})"
            )
        prepared = self.prepare(name, data, crop)
        (record,) = self.classify([prepared], remember=False)
        if record["status"] != "ok":
            return record, None
        probs = np.array([record["probabilities"][c] for c in self.class_names])
        k = self.class_names.index(class_name if class_name is not None else record["label"])
        with self._cam_lock:
            from brainmri.infer.gradcam import explain_png  # imports PyTorch: only now

            if self._cam_model is None:  # Grad-CAM needs gradients: the PyTorch model
                self._cam_model = load_for_inference(self.path, "cpu")
            backend = self.classifier.backend  # occlusion runs on it when it is ONNX Runtime
            png = explain_png(
                self._cam_model, prepared.plane, k, method=method, backend=backend, probs=probs
            )
        return record, png

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
            "image_size": self.classifier.image_size,
            "recipe": {
                "name": recipe.get("name"),
                "backbone": model.get("backbone"),
                "ensemble": recipe.get("ensemble", 1),
                "image_size": recipe.get("data", {}).get("image_size"),
                "intensity": recipe.get("data", {}).get("intensity"),
            },
            "figures": figures,
            "ood_threshold": self.classifier.ood_threshold,
            "shipped": info.get("shipped"),
        }
