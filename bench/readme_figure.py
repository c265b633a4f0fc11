"""The README's `explain` figure, from a brain MRI slice that ships with an installed package.

nibabel (installed with TorchIO) ships `tests/data/example4d.nii.gz`, an axial echo-planar brain
volume (128 x 96, 24 slices). One slice of its first volume, scaled to 8 bits at its 99.5th
percentile, is written as a PNG and run through `brainmri explain` twice (Grad-CAM, then
occlusion); the two overlays, one above the other, become `docs/gradcam_example.png`. No
benchmark image is used, so the figure may be committed. `--survey FILE` also runs `predict`'s
path (guard included) on every slice of that volume and writes the records, and the batch site
check's verdict on the whole volume, to FILE.

    python bench/readme_figure.py [--slice 12] [--out docs/gradcam_example.png] \
        [--survey bench/results/shipped/example_epi_slices.json]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from robustness import report_head, write_report

from brainmri.infer.gradcam import explain_files


def example_epi_path() -> Path:
    """nibabel's bundled example EPI volume."""
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"


def epi_slice(index: int) -> np.ndarray:
    """Axial slice `index` of the first volume as uint8 (anterior up), scaled at the 99.5th
    percentile like a viewer's default window."""
    import nibabel

    volume = np.asarray(nibabel.load(example_epi_path()).dataobj, dtype=np.float32)[..., 0]
    plane = np.rot90(volume[:, :, index])
    top = float(np.percentile(plane, 99.5))
    return np.clip(np.rint(255 * plane / top), 0, 255).astype(np.uint8)


def survey(path: Path, argv: list[str] | None = None) -> list[dict]:
    """predict's records for every axial slice of the first volume (bytes as PNG)."""
    import nibabel

    from brainmri import Classifier

    n = nibabel.load(example_epi_path()).shape[2]
    items = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(epi_slice(i)).save(buf, "PNG")
        items.append((f"slice_{i:02d}.png", buf.getvalue()))
    clf = Classifier()
    records = [clf.predict_bytes(name, data) for name, data in items]
    scores = [r["ood_score"] for r in records if r.get("ood_score") is not None]
    report = {
        **report_head("example_epi_slices", __file__, argv, torch.device("cpu")),
        "volume": f"nibabel {nibabel.__version__} tests/data/{example_epi_path().name}",
        "site_check": clf.site_check(scores),  # predict's batch warning (infer/site_check.py)
        "records": records,
    }
    write_report(path, report)
    for r in records:
        print(r["path"], r["status"], r.get("label"), r.get("probability"), r.get("reason") or "")
    return records


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slice", type=int, default=12, help="axial slice of the first volume")
    ap.add_argument("--out", type=Path, default=Path("docs/gradcam_example.png"))
    ap.add_argument("--survey", type=Path, default=None, help="also predict every slice")
    args = ap.parse_args(argv)
    if args.survey is not None:
        survey(args.survey, argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"nibabel_example4d_slice{args.slice}.png"
        Image.fromarray(epi_slice(args.slice)).save(src)
        panels = []
        for method in ("gradcam", "occlusion"):
            (rec,) = explain_files([src], Path(tmp) / "out", method=method)
            if rec["status"] != "ok":
                raise SystemExit(f"{method}: {rec['status']}: {rec['reason']}")
            print(f"{method}: {rec['label']} p = {rec['probability']}")
            panels.append(np.asarray(Image.open(rec["png"]).convert("RGB")))
    gap = np.zeros((6, panels[0].shape[1], 3), np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([panels[0], gap, panels[1]])).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
