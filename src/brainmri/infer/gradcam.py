"""Grad-CAM (Selvaraju et al., 2017) with the `grad-cam` package: where the model looked.

The target layer is each backbone's stride-16 stage (timm's feature_info entry with reduction 16;
EfficientNet-Lite0: `blocks.4`, 12 x 12 at 192 px), falling back to the last conv stage for a
backbone without that metadata; its activations are weighted by the spatially averaged
gradient of the chosen class logit. docs/RESULTS.md §16.2 compares it with the last conv stage
(6 x 6) and other CAM methods on validation images. For an ensemble every member gets its own
map at its own layer (the gradient of the mean logit through a member is that member's, up to
the 1/K factor the normalization removes) and the maps are averaged. Maps are upsampled to the
input size and scaled to [0, 1] per image.

The map is computed on the input surrounded by black (a sixth of its side on each side, after
the intensity normalization, which maps black to 0) and cut back to the image: without it the
convolutions' zero-padded border lies on the image's own edges and draws hot spots there, off
the head (docs/RESULTS.md §16.7). The probabilities shown come from the unpadded input, as
predict computes them.

What `explain` draws of the map is the part above 15 % of its maximum, as the Grad-CAM paper
reads its maps for localization (Selvaraju et al., 2017, §4.1): under it the map keeps a floor
over the whole background (docs/RESULTS.md §16.17), and the overlay shows nothing there
(§16.20). `gradcam_maps` returns the map uncut.

`method="occlusion"` draws an occlusion-sensitivity map instead (infer/occlusion.py): slower
(121 forward passes at 192 px), but it weighs only what changes the answer (§16.8).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from brainmri.data.images import resize_square
from brainmri.data.transforms import normalize_planes, to_model_input
from brainmri.errors import BrainMRIError
from brainmri.infer.explain_methods import METHODS  # what `explain` can draw (module doc)
from brainmri.model.ensemble import members_of

TARGET_REDUCTION = 16
"""Stride of the stage Grad-CAM reads (see module doc)."""
BORDER_SHARE = 1 / 6
"""Black border added on each side before Grad-CAM, as a share of the input side (32 px at
192; module doc)."""
FLOOR_CUT = 0.15
"""Share of each Grad-CAM map's maximum under which explain's map is 0 (module doc)."""


def border_for(size: int) -> int:
    """Black border (pixels per side) for an input of `size` pixels."""
    return round(size * BORDER_SHARE)


def target_layer(member: nn.Module) -> nn.Module:
    """The stride-16 stage of a member's backbone, else its last conv stage (module doc)."""
    backbone = getattr(member, "backbone", member)
    modules = dict(backbone.named_modules())
    at_16 = [
        modules[info["module"]]
        for info in list(getattr(backbone, "feature_info", None) or [])
        if info.get("reduction") == TARGET_REDUCTION and info.get("module") in modules
    ]
    if at_16:
        return at_16[-1]
    for name in ("bn2", "conv_head", "final_conv", "head_conv"):
        layer = getattr(backbone, name, None)
        if isinstance(layer, nn.Module) and not isinstance(layer, nn.Identity):
            return layer
    blocks = getattr(backbone, "blocks", None) or getattr(backbone, "stages", None)
    if blocks is not None:
        return blocks[-1]
    raise ValueError(f"no conv stage found for Grad-CAM in {type(backbone).__name__}")


def gradcam_maps(
    model: nn.Module, x_input: torch.Tensor, class_idx: int | Sequence[int], border: int = 0
) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] for a model input batch (N, 3, H, W) (normalized, as
    the model takes it) and one class index, or one per image; ensemble: mean of members.
    `border`: pixels of added black on each side of the input, cut off the maps again."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    n = x_input.shape[0]
    idx = [int(class_idx)] * n if isinstance(class_idx, int) else [int(c) for c in class_idx]
    if len(idx) != n:
        raise ValueError(f"{len(idx)} class indices for {n} images")
    was_training = model.training
    model.eval()
    maps = []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = x_input.detach().clone().float()
            for member in members_of(model):
                with GradCAM(model=member, target_layers=[target_layer(member)]) as cam:
                    maps.append(
                        cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in idx])
                    )
    finally:
        model.train(was_training)
    return cut_border(np.clip(np.mean(maps, axis=0), 0.0, 1.0), border).astype(np.float32)


def cut_border(maps: np.ndarray, border: int) -> np.ndarray:
    """Maps (N, H, W) without `border` pixels on each side, rescaled to [0, 1] per map."""
    if border <= 0:
        return maps
    m = maps[:, border:-border, border:-border]
    m = m - m.min(axis=(1, 2), keepdims=True)
    return m / np.maximum(m.max(axis=(1, 2), keepdims=True), 1e-7)


def cut_floor(maps: np.ndarray, share: float = FLOOR_CUT) -> np.ndarray:
    """Maps (N, H, W) with every value under `share` of its own map's maximum set to 0."""
    top = maps.max(axis=(1, 2), keepdims=True)
    return np.where(maps < share * top, 0.0, maps).astype(maps.dtype)


def plane_pixels(
    plane: np.ndarray, size: int, intensity: str = "none", border: int = 0
) -> torch.Tensor:
    """HxW uint8 plane -> (1, 1, size, size) pixels in [0, 1], resized and intensity-normalized
    as predict does; with `border`, that many black (0) pixels added on each side."""
    x = torch.from_numpy(np.array(resize_square(np.ascontiguousarray(plane), size)))[None, None]
    x = normalize_planes(x, intensity)
    if border > 0:
        x = torch.nn.functional.pad(x, (border,) * 4, value=0.0)
    return x


def model_input(
    plane: np.ndarray,
    size: int,
    intensity: str = "none",
    channels_last: bool = False,
    border: int = 0,
) -> torch.Tensor:
    """HxW uint8 plane -> (1, 3, size, size) model input, preprocessed as predict does; with
    `border`, that many black pixels added on each side after the intensity normalization."""
    return to_model_input(plane_pixels(plane, size, intensity, border), channels_last)


def plane_maps(
    model: nn.Module,
    plane: np.ndarray,
    size: int,
    class_idx: int | Sequence[int],
    intensity: str = "none",
    channels_last: bool = False,
    method: str = "gradcam",
    backend: Any = None,
) -> np.ndarray:
    """Maps (N, size, size) of one uint8 plane for each class index asked, as explain computes
    them: Grad-CAM on the input surrounded by black, cut at FLOOR_CUT, or occlusion (module
    doc). `backend`: an ONNX Runtime backend of the same model (Classifier.backend) that the
    occlusion map's forward passes then run on (infer/occlusion.pixel_maps)."""
    if method not in METHODS:
        raise BrainMRIError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    n = 1 if isinstance(class_idx, int) else len(class_idx)
    device = next(model.parameters()).device
    if method == "occlusion":
        from brainmri.infer.occlusion import occlusion_maps, pixel_maps

        if getattr(backend, "name", None) == "onnx":
            pixels = plane_pixels(plane, size, intensity)
            return pixel_maps(backend, pixels.repeat(n, 1, 1, 1), class_idx)
        x = model_input(plane, size, intensity, channels_last).to(device)
        return occlusion_maps(model, x.repeat(n, 1, 1, 1), class_idx)
    border = border_for(size)
    x = model_input(plane, size, intensity, channels_last, border).to(device)
    return cut_floor(gradcam_maps(model, x.repeat(n, 1, 1, 1), class_idx, border))


def head_mask(plane: np.ndarray) -> np.ndarray:
    """Boolean mask of the head (largest bright region, holes filled) of a uint8 plane."""
    blur = cv2.GaussianBlur(plane, (5, 5), 0)
    otsu, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (blur > max(10.0, 0.5 * float(otsu))).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(mask)
    if contours:
        cv2.drawContours(out, [max(contours, key=cv2.contourArea)], -1, 1, thickness=cv2.FILLED)
    return out.astype(bool)


def overlay(plane: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8: the plane with the map (resized to it) blended in as a jet colour map where
    the map is above 0; where it is 0 (e.g. under Grad-CAM's floor cut) the plane shows as is."""
    h, w = plane.shape
    heat = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB).astype(np.float32)
    gray = np.repeat(plane[:, :, None], 3, axis=2).astype(np.float32)
    a = np.where(heat > 0, alpha, 0.0).astype(np.float32)[:, :, None]
    return np.uint8(np.clip((1 - a) * gray + a * colour, 0, 255))


def render_png(plane: np.ndarray, cam: np.ndarray, caption: str, side: int = 320) -> bytes:
    """PNG bytes: input and overlay side by side at side x side, caption in a band on top."""
    shown = resize_square(np.ascontiguousarray(plane), side)
    left = np.repeat(shown[:, :, None], 3, axis=2)
    right = overlay(shown, cam)
    band = 34
    canvas = Image.new("RGB", (2 * side + 8, side + band), (0, 0, 0))
    canvas.paste(Image.fromarray(left), (0, band))
    canvas.paste(Image.fromarray(right), (side + 8, band))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), caption, fill=(255, 255, 255), font=ImageFont.load_default(size=20))
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    return buf.getvalue()


def _torch_parts(classifier: Any) -> tuple[nn.Module, dict]:
    """(torch classifier, meta) of an InferenceModel, or of an object holding one (a model,
    an inference graph wrapping it as `.model`, or a loaded model as `.loaded`)."""
    for holder in (classifier, getattr(classifier, "loaded", None)):
        for attr in ("torch_model", "model"):
            m = getattr(holder, attr, None)
            inner = getattr(m, "model", None)
            if isinstance(inner, nn.Module) and hasattr(inner, "penultimate"):
                m = inner  # an inference graph: Grad-CAM runs on the classifier inside it
            if isinstance(m, nn.Module):
                return m, holder.meta
    raise TypeError(f"{type(classifier).__name__} holds no PyTorch model for Grad-CAM")


def calibrated(logits: torch.Tensor, meta: dict) -> np.ndarray:
    """Calibrated probabilities (C,) of one plane's logits: softmax at the model's temperature."""
    temperature = float(meta.get("info", {}).get("temperature", 1.0))
    return torch.softmax(logits.float() / temperature, dim=0).numpy()


def explain_plane(
    classifier: Any,
    plane: np.ndarray,
    class_idx: int | None = None,
    method: str = "gradcam",
    backend: Any = None,
    probs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(map (S, S) in [0, 1], calibrated probabilities (C,), class index explained) for one
    uint8 plane; the predicted class unless class_idx is given; `method` and `backend` as
    plane_maps takes them; `probs` (C,): the plane's calibrated probabilities, when the caller
    already ran the model (explain_files beside the guard's features, the service's record)."""
    model, meta = _torch_parts(classifier)
    rec = meta["recipe"]
    size = int(meta["preprocessing"]["image_size"])
    intensity = rec["data"].get("intensity", "none")
    channels_last = bool(rec["model"].get("channels_last", False))
    if probs is None:
        x = model_input(plane, size, intensity, channels_last)
        with torch.inference_mode():
            logits = model(x.to(next(model.parameters()).device)).float().cpu()[0]
        probs = calibrated(logits, meta)
    k = int(np.argmax(probs)) if class_idx is None else int(class_idx)
    maps = plane_maps(model, plane, size, k, intensity, channels_last, method, backend)
    return maps[0], probs, k


def answer_text(names: Sequence[str], probs: np.ndarray, k: int) -> str:
    """'glioma  p = 0.998': the class explained and its probability, rounded once from the
    unrounded value; when it is not the model's answer, that answer too:
    'glioma  p = 0.000 (model: meningioma 0.999)'. Both the PNG caption and explain's line."""
    text = f"{names[k]}  p = {float(probs[k]):.3f}"  # two spaces: the PNG's font runs them together
    top = int(np.argmax(probs))
    return text if top == k else f"{text} (model: {names[top]} {float(probs[top]):.3f})"


def explain_png(
    classifier: Any,
    plane: np.ndarray,
    class_idx: int | None = None,
    title: str = "",
    method: str = "gradcam",
    backend: Any = None,
    probs: np.ndarray | None = None,
) -> bytes:
    """Overlay PNG (input | map) with the class and its probability written on it (and the
    model's own answer when another class is explained: answer_text); `probs` as explain_plane
    takes them."""
    _, meta = _torch_parts(classifier)
    cam, probs, k = explain_plane(classifier, plane, class_idx, method, backend, probs)
    caption = answer_text(list(meta["class_names"]), probs, k)
    return render_png(plane, cam, caption + (f"   {title}" if title else ""))


def make_out_dir(out_dir: Path) -> None:
    """Create explain's output folder; a path that is a file or cannot be created is a
    one-line user error."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BrainMRIError(f"--out {out_dir} is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BrainMRIError(f"cannot create --out folder {out_dir}: {exc.strerror or exc}") from exc


def png_target(out_dir: Path, path: Path, method: str, taken: set[str]) -> Path:
    """OUT/<stem>_<method>.png, or OUT/<stem>_2_<method>.png, _3_ ... when an earlier input of
    the same run already claimed that name (`taken`: names claimed, case-folded, so two inputs
    never share a PNG on a case-insensitive file system either). The name depends only on the
    inputs before it, so a rerun with --force overwrites the same files."""
    stem = Path(path).stem
    target, n = out_dir / f"{stem}_{method}.png", 1
    while target.name.casefold() in taken:
        n += 1
        target = out_dir / f"{stem}_{n}_{method}.png"
    return target


def explain_files(
    paths: list[Path],
    out_dir: Path,
    model_path: Path | None = None,
    crop: str = "auto",
    class_name: str | None = None,
    device: str | None = None,
    method: str = "gradcam",
    force: bool = False,
) -> Iterator[dict[str, Any]]:
    """Write OUT/<stem>_<method>.png for each file, yielding one record per file as soon as its
    PNG is written (status ok / rejected / error with a reason, like predict; the class
    explained, the model's answer, `caption`: the text on the PNG, and the PNG). Two inputs of
    one run with the same stem never share a PNG (png_target); a PNG already there from an
    earlier run is an `error` record unless `force`. Lazy: the arguments are checked and the
    model loaded on the first record asked for, so `list(explain_files(...))` runs them all."""
    from brainmri.errors import RejectedInput
    from brainmri.infer.core import load_for_inference
    from brainmri.infer.guard import guard_features, load_guard
    from brainmri.infer.inputs import auto_crop, load_plane
    from brainmri.infer.ood_reason import ood_reason
    from brainmri.infer.records import read_input
    from brainmri.model.checkpoint import shipped_model_path

    model_path = Path(model_path or shipped_model_path())
    loaded = load_for_inference(model_path, device or "cpu")
    scorer, threshold = load_guard(model_path)
    names = loaded.class_names
    if class_name is not None and class_name not in names:
        raise BrainMRIError(f"unknown class {class_name!r} (one of {', '.join(names)})")
    if method not in METHODS:
        raise BrainMRIError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    backend = None
    if method == "occlusion" and loaded.device.type == "cpu":  # its 121 passes on ONNX Runtime
        from brainmri.infer.core import Classifier

        backend = Classifier(model_path, runtime="onnx").backend
    make_out_dir(out_dir)
    taken: set[str] = set()
    for path in paths:
        rec: dict[str, Any] = {"path": str(path), "status": "ok", "reason": None}
        try:
            target = png_target(out_dir, path, method, taken)
            taken.add(target.name.casefold())  # claimed in input order, whatever the outcome
            if target.exists() and not force:
                raise BrainMRIError(f"{target} exists; use --force to overwrite it")
            plane, cropped = auto_crop(load_plane(read_input(path), str(path)), crop)
            rec["cropped"] = cropped
            logits = None
            if scorer is not None:
                x = torch.from_numpy(np.array(resize_square(plane, loaded.image_size)))
                feats, logits = guard_features(
                    loaded.model, x[None, None], loaded.intensity, loaded.channels_last,
                    source=scorer.source,
                )  # fmt: skip
                score = float(scorer(feats)[0])
                rec["ood_score"] = round(score, 3)
                reason = ood_reason(score, threshold)  # the unrounded score, as predict
                if reason is not None:
                    raise RejectedInput(reason, code="ood")
            k = None if class_name is None else names.index(class_name)
            probs = None if logits is None else calibrated(logits[0], loaded.meta)
            cam, probs, k = explain_plane(loaded, plane, k, method, backend, probs)
            caption = answer_text(names, probs, k)
            target.write_bytes(render_png(plane, cam, caption))
            rec |= {"label": names[k], "probability": round(float(probs[k]), 4)}
            rec |= {"predicted": names[int(np.argmax(probs))], "caption": caption}
            rec |= {"png": str(target)}
        except RejectedInput as exc:
            rec |= {"status": "rejected", "reason": str(exc)}
        except (BrainMRIError, OSError) as exc:
            rec |= {"status": "error", "reason": str(exc)}
        yield rec
