"""A development OOD set for choosing the guard's score: no item of it is in bench/ood_set.py.

bench/ood_set.py is what the guard's figures are reported on, so it cannot also pick the score.
This set is made the same way (in code, or from files installed packages ship; nothing is
downloaded) from other sources: matplotlib's sample photos in grey, terrain elevation maps,
pydicom test files not used there (a head CT, a segmentation mask, other ultrasound and
secondary-capture images), and generated near misses: a Shepp-Logan head phantom, random
ellipses and smooth textures inside a dark oval (brain-shaped, not an MR slice).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ood_set import OODItem, encode
from PIL import Image

# (centre y, centre x, semi-axis y, semi-axis x, angle deg, intensity): Shepp & Logan (1974),
# the "modified" contrasts (Toft) so the inner ellipses are visible.
SHEPP_LOGAN = (
    (0.0, 0.0, 0.92, 0.69, 0, 1.0),
    (-0.0184, 0.0, 0.874, 0.6624, 0, -0.8),
    (0.0, 0.22, 0.31, 0.11, -18, -0.2),
    (0.0, -0.22, 0.41, 0.16, 18, -0.2),
    (0.35, 0.0, 0.25, 0.21, 0, 0.1),
    (0.1, 0.0, 0.046, 0.046, 0, 0.1),
    (-0.1, 0.0, 0.046, 0.046, 0, 0.1),
    (-0.605, -0.08, 0.023, 0.046, 0, 0.1),
    (-0.605, 0.0, 0.023, 0.023, 0, 0.1),
    (-0.605, 0.06, 0.046, 0.023, 0, 0.1),
)


def _ellipse(size: int, cy: float, cx: float, ay: float, ax: float, deg: float) -> np.ndarray:
    yy, xx = np.mgrid[1 : -1 : size * 1j, -1 : 1 : size * 1j]
    t = np.deg2rad(deg)
    u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
    v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0


def shepp_logan(size: int = 256) -> np.ndarray:
    img = np.zeros((size, size))
    for cy, cx, ay, ax, deg, value in SHEPP_LOGAN:
        img[_ellipse(size, cy, cx, ay, ax, deg)] += value
    return np.clip(img / img.max() * 255, 0, 255).astype(np.uint8)


def _in_oval(texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A texture shown only inside a head-sized oval on a black background."""
    size = texture.shape[0]
    mask = _ellipse(size, 0.0, 0.0, rng.uniform(0.75, 0.9), rng.uniform(0.6, 0.75), 0)
    return np.where(mask, texture, 0).astype(np.uint8)


def _smooth_noise(size: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    import cv2

    x = cv2.GaussianBlur(rng.normal(0, 1, (size, size)), (0, 0), sigma)
    x = (x - x.min()) / (np.ptp(x) + 1e-9)
    return (40 + 200 * x).astype(np.uint8)


def _random_ellipses(size: int, rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((size, size))
    for _ in range(12):
        ay, ax = rng.uniform(0.05, 0.5, 2)
        cy, cx = rng.uniform(-0.5, 0.5, 2)
        img[_ellipse(size, cy, cx, ay, ax, rng.uniform(0, 180))] += rng.uniform(0.2, 1.0)
    return (img / img.max() * 230).astype(np.uint8)


def _terrain() -> Iterator[tuple[str, np.ndarray]]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    dem = np.load(folder / "jacksboro_fault_dem.npz")["elevation"].astype(float)
    topo = np.load(folder / "topobathy.npz")["topo"].astype(float)
    for name, z in (("jacksboro_dem", dem), ("topobathy", topo)):
        z = (z - z.min()) / (np.ptp(z) + 1e-9) * 255
        yield name, z.astype(np.uint8)


def _grey_photos() -> Iterator[tuple[str, np.ndarray]]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        with Image.open(folder / name) as im:
            yield Path(name).stem + "_gray", np.asarray(im.convert("L"))


def _pydicom_images() -> Iterator[tuple[str, np.ndarray]]:
    import pydicom

    from brainmri.infer.dicom import to_uint8

    folder = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"
    for name in (
        "J2K_pixelrep_mismatch.dcm",  # a head CT
        "image_dfl.dcm",
        "liver_1frame.dcm",  # a segmentation mask
        "examples_rgb_color.dcm",
        "SC_jpeg_no_color_transform.dcm",
        "GDCMJ2K_TextGBR.dcm",
    ):
        ds = pydicom.dcmread(folder / name)
        arr = ds.pixel_array
        if int(ds.get("SamplesPerPixel", 1)) == 1:
            img = to_uint8(ds, arr[0] if arr.ndim == 3 else arr)
        else:
            img = (arr[0] if arr.ndim == 4 else arr).astype(np.uint8)
        yield f"{ds.get('Modality', 'NA')}_{Path(name).stem}", img


def dev_items() -> list[OODItem]:
    """Every item of the development OOD set (deterministic)."""
    rng = np.random.default_rng(1)
    items: list[OODItem] = []

    def add(kind: str, name: str, arr: np.ndarray) -> None:
        items.append(OODItem(kind, name, encode(arr), f"{kind}_{name}.png"))

    for name, img in _grey_photos():
        add("photo_gray", name, img)
        add("photo_gray", name + "_in_oval", _in_oval(np.asarray(Image.fromarray(img).resize(
            (256, 256))), rng))  # fmt: skip
    for name, img in _terrain():
        add("terrain", name, img)
        add("terrain", name + "_in_oval", _in_oval(np.asarray(Image.fromarray(img).resize(
            (256, 256))), rng))  # fmt: skip
    for name, img in _pydicom_images():
        add("medical_non_mri", name, img)
    add("phantom", "shepp_logan", shepp_logan(256))
    add("phantom", "shepp_logan_512", shepp_logan(512))
    for k in range(3):
        add("phantom", f"random_ellipses_{k}", _random_ellipses(256, rng))
    for k, sigma in enumerate((2.0, 6.0, 15.0)):
        add("texture", f"smooth_noise_oval_{k}", _in_oval(_smooth_noise(256, sigma, rng), rng))
    checker = ((np.indices((256, 256)) // 32).sum(axis=0) % 2 * 200).astype(np.uint8)
    add("texture", "checkerboard_oval", _in_oval(checker, rng))
    return items
