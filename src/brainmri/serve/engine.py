"""The one place the web service meets the inference core.

Everything the HTTP layer needs from a model goes through `Engine`: records for uploaded
bytes (the same records as `brainmri predict --json`), the Grad-CAM overlay PNG and a summary
of the model for `/v1/model`. Keeping it in one small module means the service follows the
inference core with a one-line change when that core changes.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.errors import BrainMRIError
from brainmri.infer.core import Classifier, load_for_inference
from brainmri.infer.gradcam import explain_png
from brainmri.infer.records import failed_record, prepare_bytes, scored_record

Record = dict[str, Any]
Prepared = tuple[str, "np.ndarray | None", bool, "Record | None"]
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

    def prepare(self, name: str, data: bytes) -> Prepared:
        """Decode and check one upload: (name, plane, cropped, None), or (name, None, False,
        failed record). Thread-safe; the service runs it as uploads arrive, beside the model."""
        try:
            plane, cropped = prepare_bytes(data, name, self.classifier.image_size, "auto")
        except BrainMRIError as exc:
            return name, None, False, failed_record(name, exc)
        return name, plane, cropped, None

    def classify(self, items: list[Prepared], remember: bool = True) -> list[Record]:
        """One record per prepared upload, in order, the planes run as one batch: the same
        records as `Classifier.predict_bytes` (and so `brainmri predict --json`). remember:
        count their OOD scores in the site check's window (an explained upload counts once)."""
        clf = self.classifier
        records = [failed for _, _, _, failed in items]
        kept = [i for i, (_, plane, _, _) in enumerate(items) if plane is not None]
        if kept:
            out = clf.run(np.stack([items[i][1] for i in kept])[:, None])
            probs = out["probs"].tolist()
            scores = out["ood_score"].tolist() if out["ood_score"] is not None else None
            for j, i in enumerate(kept):
                name, _, cropped, _ = items[i]
                score = scores[j] if scores is not None else None
                records[i] = scored_record(
                    name, probs[j], clf.class_names, score, clf.ood_threshold, cropped,
                    clf.min_confidence,
                )  # fmt: skip
        extra = {"model_sha256": self.sha256, "runtime": self.runtime, "tta": 1, "crop": "auto",
                 "min_confidence": clf.min_confidence}  # fmt: skip
        out = [{**r, **extra} for r in records if r is not None]
        if remember:
            self.recent.extend(r["ood_score"] for r in out if r["ood_score"] is not None)
        return out

    def site_status(self) -> dict[str, Any]:
        """The batch site check over the last SITE_WINDOW scored uploads: do they, as a whole,
        look like the images the model was checked on? `shifted` is None until enough came."""
        res = self.classifier.site_check(list(self.recent))  # a copy: uploads go on meanwhile
        return {"window": SITE_WINDOW, "scored": len(self.recent),
                "shifted": None if res is None else res["shifted"],
                "share_above_reference": None if res is None else res["share"],
                "p_value": None if res is None else res["p_value"]}  # fmt: skip

    def predict(self, items: list[tuple[str, bytes]]) -> list[Record]:
        """Records for (name, bytes) uploads: `prepare` each, then `classify` them together."""
        return self.classify([self.prepare(name, data) for name, data in items])

    def explain(
        self, name: str, data: bytes, method: str = "gradcam"
    ) -> tuple[Record, bytes | None]:
        """(record, overlay PNG of the predicted class: Grad-CAM or occlusion); no PNG unless
        status "ok". The upload is decoded and classified once: the overlay's caption shows the
        record's probability."""
        prepared = self.prepare(name, data)
        (record,) = self.classify([prepared], remember=False)
        if record["status"] != "ok":
            return record, None
        plane = prepared[1]
        probs = np.array([record["probabilities"][c] for c in self.class_names])
        with self._cam_lock:
            if self._cam_model is None:  # Grad-CAM needs gradients: the PyTorch model
                self._cam_model = load_for_inference(self.path, "cpu")
            k = self.class_names.index(record["label"])
            backend = self.classifier.backend  # occlusion runs on it when it is ONNX Runtime
            png = explain_png(
                self._cam_model, plane, k, method=method, backend=backend, probs=probs
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
