"""DICOM input: pydicom's bundled MR files, LUTs, MONOCHROME1, compression, refusals, and
DICOM copies of benchmark images that must get the JPEG's class."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from conftest import synthetic_brain
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless

from brainmri.errors import BrainMRIError, RejectedInput
from brainmri.infer.dicom import dicom_plane, is_dicom, plane_to_dicom
from brainmri.infer.inputs import load_plane

MR_VARIANTS = [
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_expb.dcm",
]


def bundled(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not bundled")
    with open(path, "rb") as f:
        return f.read()


def stretched(p: np.ndarray) -> np.ndarray:
    """What a plane becomes without a window: its min..max mapped to 0..255."""
    x = p.astype(np.float64)
    return np.rint((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)


def roundtrip(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_bundled_mr_slice_decodes_to_a_full_range_plane():
    data = bundled("MR_small.dcm")
    assert is_dicom(data, "x")  # by its DICM magic, whatever the name
    plane = dicom_plane(data)
    assert plane.shape == (64, 64) and plane.dtype == np.uint8
    assert plane.max() == 255 and plane.std() > 20
    # a 64 px close-up without the dark air around a head: the guard refuses it as a scan
    with pytest.raises(RejectedInput, match="not a brain MRI"):
        load_plane(data, "MR_small.dcm")


@pytest.mark.parametrize("name", MR_VARIANTS)
def test_compressed_and_other_encodings_give_the_same_plane(name):
    """RLE, JPEG 2000 and JPEG-LS lossless, big endian, implicit VR: one picture."""
    assert np.array_equal(dicom_plane(bundled(name)), dicom_plane(bundled("MR_small.dcm")))


def test_modality_lut_and_window_follow_the_standard():
    ds = pydicom.dcmread(io.BytesIO(bundled("MR_small.dcm")))
    raw = ds.pixel_array.astype(np.float64)
    for key in ("WindowCenter", "WindowWidth"):
        if key in ds:
            del ds[key]
    ds.RescaleSlope, ds.RescaleIntercept = "3", "-500"
    assert np.array_equal(dicom_plane(roundtrip(ds)), stretched(raw))  # linear: min..max
    c, w = float(np.median(raw)), 200.0
    ds.WindowCenter, ds.WindowWidth = f"{c:g}", f"{w:g}"
    real = raw * 3 - 500
    c_real = c * 3 - 500
    ds.WindowCenter = f"{c_real:g}"  # the window is in modality (rescaled) units
    want = np.clip((real - (c_real - 0.5)) / (w - 1) + 0.5, 0, 1) * 255
    assert np.abs(dicom_plane(roundtrip(ds)).astype(float) - want).max() <= 0.5 + 1e-9


@pytest.mark.parametrize(("bits", "slope", "intercept"), [(8, 1, 0), (12, 2, -20), (16, 2, -1024)])
def test_bit_depths_scale_the_same_way(bits, slope, intercept):
    plane = synthetic_brain(96, seed=2)
    got = dicom_plane(plane_to_dicom(plane, bits=bits, slope=slope, intercept=intercept))
    assert np.abs(got.astype(int) - stretched(plane)).max() <= 1


def test_monochrome1_is_inverted():
    plane = synthetic_brain(96, seed=3)
    mono2 = dicom_plane(plane_to_dicom(plane))
    mono1 = dicom_plane(plane_to_dicom(plane, monochrome1=True))
    assert np.abs(mono1.astype(int) - mono2).max() <= 1  # stored inverted, shown the same


@pytest.mark.parametrize("ts", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k"])
def test_compressed_copies_written_here_decode_losslessly(ts):
    plane = synthetic_brain(96, seed=5)
    want = dicom_plane(plane_to_dicom(plane))
    assert np.array_equal(dicom_plane(plane_to_dicom(plane, transfer_syntax=ts)), want)


def test_other_modalities_are_rejected():
    with pytest.raises(RejectedInput, match="modality CT") as info:
        load_plane(bundled("CT_small.dcm"), "CT_small.dcm")
    assert info.value.code == "dicom-modality"


def test_a_body_part_other_than_the_head_is_rejected():
    """pydicom's abdominal MR slice says ABDOMEN; a benchmark-like slice tagged with another
    body part is refused, one tagged as the head, or untagged, or tagged in a word the list
    does not know, is read as usual."""
    with pytest.raises(RejectedInput, match="body part ABDOMEN") as info:
        load_plane(bundled("examples_overlay.dcm"), "abdomen.dcm")
    assert info.value.code == "dicom-body-part"
    ds = pydicom.dcmread(io.BytesIO(plane_to_dicom(synthetic_brain(128))))
    want = load_plane(roundtrip(ds), "none.dcm")
    for part in ("CHEST", "C SPINE", "KNEE", "PELVIS"):
        ds.BodyPartExamined = part
        with pytest.raises(RejectedInput, match="body part"):
            load_plane(roundtrip(ds), "other.dcm")
    for part in ("HEAD", "BRAIN", "HEADNECK", "HEAD_NECK", "SKULL", "KOPF", "", "MR SELLA"):
        ds.BodyPartExamined = part
        assert np.array_equal(load_plane(roundtrip(ds), "head.dcm"), want), part


def test_multi_frame_is_rejected():
    ds = pydicom.dcmread(io.BytesIO(bundled("MR_small.dcm")))
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    with pytest.raises(RejectedInput, match="multi-frame"):
        load_plane(roundtrip(ds), "multi.dcm")


def test_missing_pixel_data_and_truncation_are_errors():
    ds = pydicom.dcmread(io.BytesIO(bundled("MR_small.dcm")))
    del ds.PixelData
    for data, what in ((roundtrip(ds), "no pixel data"), (bundled("MR_truncated.dcm"), "decode")):
        with pytest.raises(BrainMRIError, match=what) as info:
            load_plane(data, "x.dcm")
        assert not isinstance(info.value, RejectedInput)
    with pytest.raises(BrainMRIError, match="not a readable DICOM"):
        load_plane(b"\0" * 200, "junk.dcm")


def test_small_dicom_is_refused_by_the_plane_rules():
    with pytest.raises(RejectedInput, match="tiny"):
        load_plane(plane_to_dicom(synthetic_brain(16)), "small.dcm")


@pytest.mark.slow
def test_dicom_copies_of_benchmark_images_get_the_jpeg_class(benchmark_dir):
    """One test image per class as 12- and 16-bit, rescaled, MONOCHROME1 and compressed
    DICOM: the shipped model gives each copy the class it gives the JPEG."""
    import torch

    from brainmri.data.images import resize_square
    from brainmri.infer.core import load_for_inference
    from brainmri.model.checkpoint import shipped_model_path

    loaded = load_for_inference(shipped_model_path(), "cpu")
    variants = [
        {"bits": 12},
        {"bits": 16, "slope": 2, "intercept": -1024},
        {"bits": 12, "monochrome1": True},
        {"bits": 12, "transfer_syntax": JPEG2000Lossless},
    ]
    files = [
        f for c in loaded.class_names for f in sorted((benchmark_dir / "Testing" / c).iterdir())[:1]
    ]
    planes, groups = [], []
    for f in files:
        jpeg_plane = load_plane(f.read_bytes(), f.name)
        planes.append(jpeg_plane)
        for v in variants:
            planes.append(load_plane(plane_to_dicom(jpeg_plane, **v), f.stem + ".dcm"))
        groups.append(len(variants) + 1)
    x = torch.from_numpy(np.stack([resize_square(p, loaded.image_size) for p in planes])[:, None])
    labels = loaded.probs(x).argmax(dim=1).numpy()
    start = 0
    for f, n in zip(files, groups, strict=True):
        assert (labels[start : start + n] == labels[start]).all(), (
            f.name,
            labels[start : start + n],
        )
        start += n


def test_pixel_limit_is_judged_from_the_header():
    data = plane_to_dicom(synthetic_brain(96))
    assert load_plane(data, "a.dcm", max_pixels=96 * 96).shape == (96, 96)
    with pytest.raises(RejectedInput, match="over-pixel-limit") as info:
        load_plane(data, "a.dcm", max_pixels=96 * 96 - 1)
    assert info.value.code == "over-pixel-limit"


def test_dicom_copies_of_a_packaged_brain_slice_get_the_png_record():
    """A slice of nibabel's example EPI brain volume (docs/RESULTS.md section 16.19) as PNG and
    as 12-bit, rescaled 16-bit, MONOCHROME1 and JPEG 2000 DICOM tagged HEAD: predict gives every
    copy the PNG's class, at the same probability (the planes are equal). Needs no dataset."""
    from test_guard import _bench

    from brainmri import Classifier

    plane = _bench("readme_figure").epi_slice(12)
    clf = Classifier()
    png = clf.predict_bytes("slice.png", _png(plane))
    assert png["status"] == "ok", png
    for v in (
        {"bits": 12},
        {"bits": 16, "slope": 2, "intercept": -1024},
        {"bits": 12, "monochrome1": True},
        {"bits": 12, "transfer_syntax": JPEG2000Lossless},
    ):
        ds = pydicom.dcmread(io.BytesIO(plane_to_dicom(plane, **v)))
        ds.BodyPartExamined = "HEAD"
        rec = clf.predict_bytes("slice.dcm", roundtrip(ds))
        assert rec["status"] == "ok" and rec["label"] == png["label"], (v, rec)
        assert rec["probability"] == pytest.approx(png["probability"], abs=1e-6), (v, rec)


def _png(plane: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(plane).save(buf, "PNG")
    return buf.getvalue()
