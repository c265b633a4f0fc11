"""The curated out-of-distribution set: files the input guard must refuse, made in code.

Nothing is downloaded: every image is generated here or comes from files that installed
packages ship (scikit-learn's sample photos, matplotlib's sample data, pydicom's test files).
Each item is (kind, name, file bytes, file name), so it goes through the same path as a user's
file (load_plane -> auto_crop -> model -> OOD score).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

KINDS = (
    "black",
    "white",
    "constant_gray",
    "rgb_noise",
    "gray_noise",
    "gradient",
    "text_document",
    "16bit_noise",
    "1x1",
    "10x10",
    "photo_sklearn",
    "photo_matplotlib",
    "medical_non_mri",
    "mri_non_brain",
    "dicom_non_mr",
)

TEXT = (
    "Patient information leaflet. This document describes the examination, how to prepare, "
    "what to bring and when the results will be ready. Please read it carefully and ask the "
    "staff if anything is unclear. Appointments can be moved up to two days before the date. "
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt "
    "ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation."
)


class OODItem(NamedTuple):
    kind: str
    name: str
    data: bytes
    file_name: str


def encode(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    im.save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _gradients(size: int = 256) -> dict[str, np.ndarray]:
    t = np.linspace(0, 255, size)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    radial = np.hypot(yy - 0.5, xx - 0.5) / np.sqrt(0.5)
    return {
        "horizontal": np.tile(t, (size, 1)),
        "vertical": np.tile(t[:, None], (1, size)),
        "diagonal": (xx + yy) / 2 * 255,
        "radial_bright_centre": (1 - radial) * 255,
        "radial_dark_centre": radial * 255,
        "rgb_ramp": np.stack([xx * 255, yy * 255, (1 - xx) * 255], axis=-1),
    }


def _text_pages() -> dict[str, np.ndarray]:
    font = ImageFont.load_default(size=18)
    pages = {}
    for name, (bg, fg) in {
        "page_black_on_white": (255, 0),
        "screen_white_on_black": (0, 230),
    }.items():
        im = Image.new("L", (512, 640), bg)
        draw = ImageDraw.Draw(im)
        words, line, y = TEXT.split(), "", 30
        for w in words * 3:
            if draw.textlength(line + " " + w, font=font) > 450:
                draw.text((30, y), line, fill=fg, font=font)
                line, y = w, y + 26
                if y > 600:
                    break
            else:
                line = (line + " " + w).strip()
        pages[name] = np.asarray(im)
    return pages


def _sample_photos() -> Iterator[tuple[str, np.ndarray]]:
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    for path, img in zip(data.filenames, data.images, strict=True):
        stem = Path(path).stem
        yield stem, img
        yield f"{stem}_gray", np.asarray(Image.fromarray(img).convert("L"))
        h, w = img.shape[:2]
        yield f"{stem}_centre_crop", img[h // 2 - 150 : h // 2 + 150, w // 2 - 150 : w // 2 + 150]


def _matplotlib_samples() -> Iterator[tuple[str, np.ndarray]]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        with Image.open(folder / name) as im:
            yield Path(name).stem, np.asarray(im.convert("RGB"))


def _plot(draw, width: float = 6.4, height: float = 4.8) -> np.ndarray:
    """Render a matplotlib drawing (Agg) to an RGB array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80)
    canvas = FigureCanvasAgg(fig)
    draw(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _medical_non_mri() -> Iterator[tuple[str, np.ndarray]]:
    """Other modalities from pydicom's test files, rendered like a viewer; EEG and ECG traces."""
    import matplotlib
    import pydicom

    from brainmri.infer.dicom import to_uint8

    folder = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"
    for name in (
        "CT_small.dcm",
        "693_J2KI.dcm",
        "JPEG2000.dcm",
        "JPGExtended.dcm",
        "examples_jpeg2k.dcm",
        "examples_palette.dcm",
        "examples_ybr_color.dcm",
        "rtdose_1frame.dcm",
    ):
        ds = pydicom.dcmread(folder / name)
        arr = ds.pixel_array
        modality = str(ds.get("Modality", "?"))
        if int(ds.get("SamplesPerPixel", 1)) == 1 and arr.ndim == 3:
            arr = arr[0]
        if int(ds.get("SamplesPerPixel", 1)) == 1:
            img = to_uint8(ds, arr)
        else:
            img = (arr[0] if arr.ndim == 4 else arr).astype(np.uint8)  # pydicom gives RGB
        yield f"{modality}_{Path(name).stem}", img

    eeg = np.fromfile(Path(matplotlib.get_data_path()) / "sample_data" / "eeg.dat", np.int16)
    eeg = eeg.reshape(-1, 4).T.astype(float)

    def eeg_plot(fig):
        ax = fig.add_subplot()
        for k, ch in enumerate(eeg):
            ax.plot(ch / (np.ptp(ch) + 1) + k, lw=0.6, color="k")
        ax.set_title("EEG")

    yield "EEG_traces", _plot(eeg_plot)
    ecg_ds = pydicom.dcmread(folder / "waveform_ecg.dcm")
    ecg = ecg_ds.waveform_array(0)[:2000, :6].T.astype(float)

    def ecg_plot(fig):
        ax = fig.add_subplot()
        ax.set_facecolor("#fff0f0")
        ax.grid(True, color="#f4a0a0", lw=0.5)
        for k, ch in enumerate(ecg):
            ax.plot(ch / (np.ptp(ch) + 1) + k, lw=0.7, color="k")

    yield "ECG_strip", _plot(ecg_plot, 8, 4)


def _dicom_files() -> Iterator[tuple[str, bytes]]:
    import pydicom

    folder = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"
    for name in ("CT_small.dcm", "693_J2KI.dcm", "JPEG2000.dcm", "examples_palette.dcm"):
        yield name, (folder / name).read_bytes()


def ood_items() -> list[OODItem]:
    """Every item of the curated OOD set (deterministic)."""
    rng = np.random.default_rng(0)
    items: list[OODItem] = []

    def add(kind: str, name: str, arr: np.ndarray, fmt: str = "PNG", mode: str | None = None):
        ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
        items.append(OODItem(kind, name, encode(arr, fmt, mode), f"{kind}_{name}.{ext}"))

    add("black", "256_png", np.zeros((256, 256), np.uint8))
    add("black", "512_rgb_jpg", np.zeros((512, 512, 3), np.uint8), "JPEG")
    add("white", "256_png", np.full((256, 256), 255, np.uint8))
    add("white", "512_rgb_jpg", np.full((512, 512, 3), 255, np.uint8), "JPEG")
    for v in (77, 128, 200):
        add("constant_gray", f"value_{v}", np.full((256, 256), v, np.uint8))
    for k in range(3):
        add("rgb_noise", f"uniform_{k}", rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    add("rgb_noise", "uniform_jpg", rng.integers(0, 256, (300, 300, 3), dtype=np.uint8), "JPEG")
    for k in range(2):
        add("gray_noise", f"uniform_{k}", rng.integers(0, 256, (256, 256), dtype=np.uint8))
    gauss = np.clip(rng.normal(110, 40, (256, 256)), 0, 255).astype(np.uint8)
    add("gray_noise", "gaussian", gauss)
    add("gray_noise", "dark_speckle", rng.integers(0, 40, (256, 256), dtype=np.uint8))
    for name, g in _gradients().items():
        add("gradient", name, np.clip(np.rint(g), 0, 255).astype(np.uint8))
    for name, page in _text_pages().items():
        add("text_document", name, page)
        add("text_document", name + "_jpg", page, "JPEG")
    for k in range(2):
        add("16bit_noise", f"i16_{k}", rng.integers(0, 65536, (256, 256)).astype(np.uint16))
    add("1x1", "gray", np.full((1, 1), 128, np.uint8))
    add("1x1", "rgb_jpg", np.full((1, 1, 3), 200, np.uint8), "JPEG")
    add("10x10", "noise", rng.integers(0, 256, (10, 10), dtype=np.uint8))
    add("10x10", "rgb_noise", rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
    for name, img in _sample_photos():
        add("photo_sklearn", name, img, "JPEG")
    for name, img in _matplotlib_samples():
        add("photo_matplotlib", name, img, "JPEG")
    for name, img in _medical_non_mri():
        add("medical_non_mri", name, img)
    for name, data in _dicom_files():
        items.append(OODItem("dicom_non_mr", name, data, name))
    folder = Path(os.path.dirname(pydicom_file())) / "data" / "test_files"
    abdomen = (folder / "examples_overlay.dcm").read_bytes()  # an abdominal MR slice
    items.append(OODItem("mri_non_brain", "abdomen_mr_dicom", abdomen, "abdomen.dcm"))
    add("mri_non_brain", "abdomen_mr_png", _untagged_plane(abdomen))  # the same pixels, no tags
    return items


def _untagged_plane(data: bytes) -> np.ndarray:
    """The uint8 plane of a DICOM slice as `predict` reads it, its Body Part Examined removed:
    what the same image looks like to the guard as a PNG."""
    import io

    import pydicom

    from brainmri.infer.dicom import dicom_plane

    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.BodyPartExamined
    buf = io.BytesIO()
    ds.save_as(buf)
    return dicom_plane(buf.getvalue())


def pydicom_file() -> str:
    import pydicom

    return pydicom.__file__
