"""`brainmri predict`: image files or folders -> one record per file, streamed.

Files are decoded by a thread pool a bounded number of files ahead of the model
(`Classifier.stream`), so memory stays flat for any number of files; records are printed and
written to JSON/CSV as they come. Each record says what produced it: model sha256, runtime,
TTA views and crop mode. A file that cannot be read gets `status: error`, one the input guard
refuses `status: rejected`, both with the reason; the others are still classified.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from brainmri.data.folders import IMAGE_EXTENSIONS
from brainmri.errors import BrainMRIError
from brainmri.infer.core import Classifier
from brainmri.infer.records import check_tta
from brainmri.infer.site_check import shift_message

INPUT_SUFFIXES = frozenset(IMAGE_EXTENSIONS) | {".dcm", ".dicom"}


def expand_inputs(inputs: Iterable[Path]) -> list[Path]:
    """Files as given; folders walked recursively (sorted) for image and DICOM files.

    Broken symbolic links with an image suffix are kept, so they are reported, not skipped.
    """
    out: list[Path] = []
    for item in inputs:
        if item.is_dir():
            out.extend(
                sorted(
                    p
                    for p in item.rglob("*")
                    if p.suffix.lower() in INPUT_SUFFIXES and (p.is_file() or p.is_symlink())
                )
            )
        else:
            out.append(item)
    return out


def check_outputs(
    paths: list[Path | None], force: bool, inputs: Iterable[Path] = ()
) -> None:
    """Refuse, before any work, an output that cannot be written: the same file twice, one of
    the `inputs` (even with force: predict never writes its input), a folder, an existing file
    unless forced, or a place where no file can be made."""
    given = [p for p in paths if p is not None]
    if len({p.resolve() for p in given}) < len(given):
        raise BrainMRIError(f"--json and --csv name the same file ({given[0]})")
    read = {p.resolve() for p in inputs}
    for p in given:
        if p.resolve() in read:
            raise BrainMRIError(f"{p} is one of the inputs; predict does not overwrite its input")
    for p in given:
        if p.is_dir():
            raise BrainMRIError(f"{p} is a folder, not a file")
        if p.exists() and not force:
            raise BrainMRIError(f"{p} exists; use --force to overwrite it")
        check_writable(p)


def check_writable(path: Path) -> None:
    """A one-line error unless a file can be written at `path`. When its folder exists, a
    trial open tells (an existing file is left as it is, a new one removed again: this also
    catches /proc and read-only mounts); otherwise the nearest existing folder above it must
    be a folder we may write in (the missing ones are made when writing starts)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise BrainMRIError(f"cannot write {path}: {folder} is not a folder")
    if folder != path.parent:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BrainMRIError(f"cannot write {path}: no permission to make folders in {folder}")
        return
    existed = path.exists() or path.is_symlink()
    try:
        with path.open("a"):
            pass
    except OSError as exc:
        raise BrainMRIError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not existed:
        path.unlink(missing_ok=True)


class RecordWriter:
    """Streams records to a JSON array and/or a CSV table (one row per file)."""

    def __init__(self, json_path: Path | None, csv_path: Path | None, class_names: list[str]):
        self.class_names = class_names
        self.files: list[IO[str]] = []
        self.json = self._open(json_path)
        self.csv_file = self._open(csv_path)
        self.csv = None
        self.count = 0
        if self.json:
            self.json.write("[")
        if self.csv_file:
            self.csv = csv.writer(self.csv_file)
            self.csv.writerow(self.columns())

    def _open(self, path: Path | None) -> IO[str] | None:
        if path is None:
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = path.open("w", newline="")
        except OSError as exc:
            for opened in self.files:
                opened.close()
            raise BrainMRIError(f"cannot write {path}: {exc.strerror or exc}") from None
        self.files.append(f)
        return f

    def columns(self) -> list[str]:
        base = ["path", "status", "reason", "label", "probability"]
        tail = ["ood_score", "cropped", "model_sha256", "runtime", "tta", "crop", "min_confidence"]
        return base + [f"p_{c}" for c in self.class_names] + tail

    def write(self, rec: dict[str, Any]) -> None:
        if self.json:
            self.json.write(("," if self.count else "") + "\n  " + json.dumps(rec))
        if self.csv:
            probs = [rec["probabilities"].get(c, "") for c in self.class_names]
            row = {**rec, "reason": rec["reason"] or ""}
            cols = self.columns()
            tail = cols[5 + len(self.class_names) :]
            self.csv.writerow([row[k] for k in cols[:5]] + probs + [row.get(k, "") for k in tail])
        self.count += 1

    def close(self) -> None:
        if self.json:
            self.json.write("\n]\n")
        for f in self.files:
            f.close()


def format_record(rec: dict[str, Any], width: int) -> tuple[str, bool]:
    """(the line to print, whether it goes to stderr)."""
    path = rec["path"]
    if rec["status"] == "ok":
        others = "  ".join(f"{k} {v:.3f}" for k, v in rec["probabilities"].items())
        return f"{path:<{width}}  {rec['label']:<10} {rec['probability']:.3f}   ({others})", False
    reason = rec["reason"] or ""
    where = "" if reason.startswith(path) else f"{path}: "
    return f"{rec['status']}: {where}{reason}", True


def summary_line(counts: Counter, outputs: list[Path]) -> str:
    """'11 files: 8 ok, 1 rejected, 2 error; records in pred.json': the end of a batch."""
    line = f"{sum(counts.values())} files: " + ", ".join(
        f"{counts[s]} {s}" for s in ("ok", "rejected", "error")
    )
    return line + (f"; records in {', '.join(map(str, outputs))}" if outputs else "")


def run_predict(
    classifier: Classifier,
    paths: list[Path],
    tta: int = 1,
    crop: str = "auto",
    json_out: Path | None = None,
    csv_out: Path | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    echo: Callable[[str, bool], None] | None = None,
) -> Counter:
    """Classify `paths`, print one line each, stream records to the outputs; status counts.
    Several files end with a line of status counts (stderr), and with one warning line when the
    batch as a whole does not look like the images the model was checked on
    (infer/site_check.py). A bad `tta` or an output that cannot be opened is a BrainMRIError
    before any file is read."""
    tta = check_tta(tta)
    extra = {"model_sha256": classifier.sha256, "runtime": classifier.runtime, "tta": tta,
             "crop": crop, "min_confidence": classifier.min_confidence}  # fmt: skip
    writer = RecordWriter(json_out, csv_out, classifier.class_names)
    counts: Counter = Counter()
    width = min(60, max(len(str(p)) for p in paths))
    disable = None if progress is None else not progress  # None: a bar only on a terminal
    bar = tqdm(total=len(paths), unit="img", file=sys.stderr, disable=disable, leave=False)

    def say(line: str, to_err: bool) -> None:
        if echo is not None:
            echo(line, to_err)
        else:
            bar.write(line, file=sys.stderr if to_err else sys.stdout)

    scores: list[float | None] = []  # one float per file: flat memory for any number of files
    try:
        for rec in classifier.stream(paths, tta, crop, workers):
            rec.update(extra)
            writer.write(rec)
            counts[rec["status"]] += 1
            scores.append(rec.get("ood_score"))
            say(*format_record(rec, width))
            bar.update(1)
        if len(scores) > 1:
            say(summary_line(counts, [o for o in (json_out, csv_out) if o is not None]), True)
        site = classifier.site_check(scores)
        if site is not None and site["shifted"]:
            say(shift_message(site), True)
    finally:
        bar.close()
        writer.close()
    return counts
