"""The inference core: batched logits over a uint8 cache (evaluate, training) and Classifier.

`Classifier` is the one entry point for prediction (CLI `predict`, the web API, Python users):
it loads a model file, picks a runtime (ONNX Runtime on CPU by default, PyTorch on a GPU or
when asked), and turns files, bytes or planes into records. Both runtimes run the same graph
(`infer.graph.InferenceGraph`), so they give the same classes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brainmri.data.intensity import normalize_planes as normalize_planes_np
from brainmri.errors import BrainMRIError
from brainmri.infer.records import (
    check_crop_mode,
    check_min_confidence,
    check_tta,
    decode_stream,
    failed_record,
    prepare_bytes,
    read_input,
    scored_record,
)

if TYPE_CHECKING:  # PyTorch is imported where it is used: ONNX Runtime on a CPU needs none
    import torch
    from torch import nn

RUNTIMES = ("auto", "onnx", "torch")

log = logging.getLogger("brainmri.infer")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """PyTorch's intra-op threads set to `n` for a block, then restored (None: unchanged).

    With ONNX Runtime doing the model's work on every core, PyTorch only preprocesses (a table
    lookup, a concatenation): spread over two threads those small ops cost more than they save,
    and the pool's threads keep spinning after them, on the cores ONNX Runtime then needs
    (docs/RESULTS.md §17.7: a quarter less CPU per image, median latency 1–1.5 ms lower on 2
    cores).
    Only the caller that changed the count restores it, so overlapping calls from several
    threads leave it as they found it.
    """
    import torch

    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def autocast_context(device: torch.device, amp: str):
    """bf16/fp16 autocast where asked for (auto: bf16 on CUDA, none on CPU)."""
    import torch

    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    amp: str = "auto",
    tta: int = 1,
    progress=None,
    intensity: str = "none",
) -> tuple[list[str], torch.Tensor]:
    """Logits for every view: (view names, tensor (V, N, C)) on CPU, float32."""
    import torch

    from brainmri.data.transforms import normalize_planes, to_model_input, tta_views

    device = torch.device(device)
    was_training = model.training
    model.eval()
    names: list[str] = []
    chunks: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            planes = images[start : start + batch_size].to(device, non_blocking=True)
            views = tta_views(normalize_planes(planes, intensity), tta)
            names = [n for n, _ in views]
            with autocast_context(device, amp):
                out = [model(to_model_input(v, channels_last)).float() for _, v in views]
            chunks.append(torch.stack(out).cpu())
            if progress is not None:
                progress.update(len(planes))
    model.train(was_training)
    if not chunks:
        return names, torch.empty((tta, 0, 0))
    return names, torch.cat(chunks, dim=1)


def tta_probs_np(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Average of per-view softmax probabilities (V, N, C) -> (N, C), in numpy (float32): the
    one implementation, used as it is on the path that imports no PyTorch."""
    z = logits.astype(np.float32) / np.float32(temperature)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).mean(axis=0)


def tta_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """`tta_probs_np` for a tensor of logits (V, N, C) -> (N, C)."""
    import torch

    return torch.from_numpy(tta_probs_np(logits.detach().float().cpu().numpy(), temperature))


class ModelMetadata:
    """What a model file's metadata says about its classes and preprocessing (`self.meta`)."""

    meta: dict

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def image_size(self) -> int:
        return int(self.meta["preprocessing"]["image_size"])

    @property
    def intensity(self) -> str:
        prep = self.meta["preprocessing"]
        return prep.get("intensity") or self.meta["recipe"]["data"].get("intensity", "none")

    @property
    def temperature(self) -> float:
        return float(self.meta.get("info", {}).get("temperature", 1.0))


@dataclass
class InferenceModel(ModelMetadata):
    """A loaded model file with the preprocessing its metadata prescribes."""

    model: nn.Module
    meta: dict
    device: torch.device

    @property
    def channels_last(self) -> bool:
        return bool(self.meta["recipe"]["model"].get("channels_last", True))

    def logits(
        self, images: torch.Tensor, tta: int = 1, batch_size: int = 64, progress=None
    ) -> tuple[list[str], torch.Tensor]:
        """Per-view logits (V, N, C) for a uint8 (N, 1|3, S, S) batch at image_size."""
        return predict_logits(
            self.model, images, batch_size, self.device, self.channels_last, "auto", tta,
            progress, self.intensity,
        )  # fmt: skip

    def probs(self, images: torch.Tensor, tta: int = 1, batch_size: int = 64) -> torch.Tensor:
        """Calibrated probabilities (N, C), TTA views averaged."""
        return tta_probs(self.logits(images, tta, batch_size)[1], self.temperature)


def load_for_inference(
    path: str | Path, device: str | torch.device | None = None
) -> InferenceModel:
    """Load a model file for prediction (eval mode, channels_last when its recipe says so)."""
    import torch

    from brainmri.model.checkpoint import load_model

    dev = resolve_device(device)
    model, meta = load_model(path, dev)
    loaded = InferenceModel(model, meta, dev)
    if loaded.channels_last:
        loaded.model = model.to(memory_format=torch.channels_last)
    return loaded


# --------------------------------------------------------------------------------------------
# device and runtime choice
# --------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """cpu / cuda / cuda:N checked against this machine (None: cuda when present, else cpu)."""
    import torch

    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise BrainMRIError(f"unknown device {str(device)!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BrainMRIError(f"device {str(device)!r}: no CUDA GPU is available here (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise BrainMRIError(f"device {str(device)!r}: this machine has {n} CUDA GPU(s)")
    elif dev.type != "cpu":
        raise BrainMRIError(f"unsupported device {str(device)!r} (use cpu, cuda or cuda:N)")
    return dev


def resolve_runtime(
    runtime: str, device: str | torch.device | None, model_path: Path
) -> tuple[str, torch.device]:
    """(runtime, device): auto = PyTorch on a GPU, else ONNX Runtime on CPU."""
    if runtime not in RUNTIMES:
        raise BrainMRIError(f"unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
    dev = resolve_device(device)
    is_onnx = model_path.suffix.lower() == ".onnx"
    if is_onnx and runtime == "torch":
        raise BrainMRIError(f"{model_path} is an ONNX export: runtime torch needs a .safetensors")
    if runtime == "auto":
        runtime = "onnx" if (is_onnx or dev.type == "cpu") else "torch"
    if runtime == "onnx" and dev.type != "cpu":
        what = "this ONNX export runs" if is_onnx else "runtime onnx runs"
        raise BrainMRIError(f"{what} on CPU only; use --runtime torch for {dev}")
    return runtime, dev


def gpu_stack_present() -> bool:
    """False only when this machine plainly has no GPU PyTorch could use: Linux without NVIDIA
    or ROCm device nodes and without nvidia-smi (elsewhere: True, PyTorch is asked)."""
    if sys.platform != "linux":
        return True
    nodes = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")
    return any(os.path.exists(n) for n in nodes) or shutil.which("nvidia-smi") is not None


def gpu_possible() -> bool:
    """Whether "auto" must ask PyTorch about a GPU: when one may be there, or when PyTorch is
    imported anyway; otherwise it picks ONNX Runtime on the CPU without importing it."""
    return "torch" in sys.modules or gpu_stack_present()


def pick_runtime(runtime: str, device: Any, model_path: Path) -> tuple[str, str]:
    """`resolve_runtime` as (runtime, device name), without PyTorch when the answer is ONNX
    Runtime on the CPU and no GPU can be there; otherwise (bad names included) PyTorch decides."""
    on_cpu = device in (None, "", "cpu")
    is_onnx = model_path.suffix.lower() == ".onnx"
    if runtime in ("auto", "onnx") and on_cpu and (is_onnx or not gpu_possible()):
        return "onnx", "cpu"
    rt, dev = resolve_runtime(runtime, device, model_path)
    return rt, str(dev)


class TorchBackend:
    """Runs the inference graph in PyTorch (eval, inference_mode, bf16 autocast on CUDA)."""

    name = "torch"

    def __init__(self, graph: nn.Module, device: torch.device, output_names: tuple[str, ...]):
        self.graph, self.device, self.output_names = graph, device, list(output_names)

    def __call__(self, pixels: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Pixels (N, 1, S, S) float32 in [0, 1] -> float32 numpy outputs, as OnnxBackend."""
        import torch

        x = torch.as_tensor(pixels).to(self.device, non_blocking=True)
        with torch.inference_mode(), autocast_context(self.device, "auto"):
            out = self.graph(x)
        return {n: o.float().cpu().numpy() for n, o in zip(self.output_names, out, strict=True)}


def _torch_backend(path: Path, device: torch.device) -> tuple[TorchBackend, dict]:
    import torch

    from brainmri.infer.graph import build_graph
    from brainmri.model.checkpoint import load_model

    model, meta = load_model(path, device)
    channels_last = bool(meta["recipe"]["model"].get("channels_last", True))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    graph = build_graph(model, meta, path, channels_last).to(device)
    return TorchBackend(graph, device, graph.output_names), meta


# --------------------------------------------------------------------------------------------
# Classifier: the prediction API
# --------------------------------------------------------------------------------------------


class Classifier(ModelMetadata):
    """A model file ready to classify files, bytes or planes, on ONNX Runtime or PyTorch.

    `model`: a .safetensors model file (default: the shipped one) or an .onnx export. With the
    ONNX runtime a .safetensors file is exported once and the export cached (see
    `infer.export.cached_export`). On a CPU without a GPU stack the ONNX Runtime path
    imports no PyTorch unless TTA views are asked for (docs/RESULTS.md §17.15). `threads`:
    ONNX Runtime intra-op threads (default: cores). `min_confidence`: a file whose top
    calibrated probability is under it gets `status: rejected` ("uncertain ..."); None: the
    model file's `info.min_confidence` if it has one, else off; 0: off. `spin_wait`: ONNX
    Runtime's threads spin between operators during a call (onnx_runtime.session_options):
    quicker one image at a time on an idle machine, slower when other processes share the
    cores (docs/RESULTS.md §17.13). `notice`: called with one line when the model is about
    to be exported to ONNX (the first time a model file is used; seconds), default: logged at
    INFO on the "brainmri.infer" logger.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        runtime: str = "auto",
        device: str | torch.device | None = None,
        threads: int | None = None,
        batch_size: int = 32,
        min_confidence: float | None = None,
        spin_wait: bool = False,
        notice: Callable[[str], None] | None = None,
    ):
        from brainmri.data.dedupe import file_sha256
        from brainmri.infer.onnx_cache import cached_path
        from brainmri.model.shipped import shipped_model_path

        path = Path(model) if model is not None else shipped_model_path()
        if not path.is_file():
            raise BrainMRIError(f"model file not found: {path}")
        self.runtime, self.device_name = pick_runtime(runtime, device, path)
        self.path, self.sha256, self.batch_size = path, file_sha256(path), batch_size
        if self.runtime == "onnx":
            from brainmri.infer.onnx_runtime import OnnxBackend

            onnx_path = path if path.suffix.lower() == ".onnx" else cached_path(self.sha256)
            if not onnx_path.is_file():  # making the export needs PyTorch: imported only now
                from brainmri.infer.export import cached_export

                msg = f"exporting the model to ONNX once (cached in {onnx_path.parent})"
                (notice or log.info)(msg)
                onnx_path = cached_export(path, self.sha256)
            self.backend: TorchBackend | OnnxBackend = OnnxBackend(onnx_path, threads, spin_wait)
            self.meta: dict = self.backend.meta
        else:
            self.backend, self.meta = _torch_backend(path, self.device)
        if min_confidence is None:
            min_confidence = self.meta.get("info", {}).get("min_confidence")
        self.min_confidence = check_min_confidence(min_confidence)

    # metadata ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device as a torch.device (imports PyTorch; `device_name` does not)."""
        import torch

        return torch.device(self.device_name)

    @property
    def ood_threshold(self) -> float | None:
        from brainmri.infer.ood_reason import ood_threshold

        return ood_threshold(self.meta)

    def site_check(self, scores: Iterable[float | None]) -> dict | None:
        """Whether a batch, by the `ood_score`s of its records, looks as a whole shifted from
        the images the model was checked on (infer/site_check.py); None when not judged."""
        from brainmri.infer.site_check import reference_median, site_shift

        return site_shift(scores, reference_median(self.meta))

    # planes -----------------------------------------------------------------------------
    def run(self, planes: torch.Tensor | np.ndarray, tta: int = 1) -> dict:
        """uint8 planes (N, 1, S, S) -> logits (V, N, C) per TTA view, calibrated probs (N, C)
        averaged over views, features (N, F) and ood_score (N,) | None of the plain view; all
        float32 numpy arrays. `planes` may also be a tensor; `tta`: views, 1 to 5."""
        tta = check_tta(tta)
        if hasattr(planes, "detach"):
            planes = planes.detach().cpu().numpy()
        x = np.asarray(planes)
        if x.ndim == 3:
            x = x[:, None]
        s = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, s, s):
            raise BrainMRIError(f"expected planes (N, 1, {s}, {s}), got {tuple(x.shape)}")
        return self._forward(x, tta)

    def _forward(self, x: np.ndarray, tta: int) -> dict:
        logits, feats, ood = [], [], []
        step = max(1, self.batch_size // tta)
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            out = self.backend(self._pixels(chunk, tta))
            logits.append(out["logits"].reshape(tta, len(chunk), -1))
            feats.append(out["features"][: len(chunk)])
            if "ood_score" in out:
                ood.append(out["ood_score"].reshape(-1)[: len(chunk)])
        if not logits:
            raise BrainMRIError("no planes to classify")
        all_logits = np.concatenate(logits, axis=1)
        return {
            "logits": all_logits,
            "probs": tta_probs_np(all_logits, self.temperature),
            "features": np.concatenate(feats),
            "ood_score": np.concatenate(ood) if ood else None,
        }

    def _pixels(self, chunk: np.ndarray, tta: int) -> np.ndarray:
        """The graph's input for a chunk of planes, its TTA views stacked view by view. uint8
        planes, plain view: numpy only (data/intensity.py). TTA views (and float planes) use
        PyTorch, on one thread beside ONNX Runtime (`torch_threads`)."""
        if chunk.dtype == np.uint8 and tta == 1:
            return normalize_planes_np(chunk, self.intensity)
        import torch

        from brainmri.data.transforms import normalize_intensity, tta_views

        with torch_threads(1 if self.runtime == "onnx" else None):
            if chunk.dtype == np.uint8:
                p = torch.from_numpy(normalize_planes_np(chunk, self.intensity))
            else:
                p = normalize_intensity(torch.from_numpy(chunk).float(), self.intensity)
            return torch.cat([v for _, v in tta_views(p, tta)]).numpy()

    def _records(self, items: list[tuple[str, np.ndarray, bool]], tta: int) -> list[dict]:
        out = self.run(np.stack([plane for _, plane, _ in items])[:, None], tta)
        probs = out["probs"].tolist()
        scores = [None] * len(items) if out["ood_score"] is None else out["ood_score"].tolist()
        return [
            scored_record(
                path, row, self.class_names, score, self.ood_threshold, cropped,
                self.min_confidence,
            )  # fmt: skip
            for (path, _, cropped), row, score in zip(items, probs, scores, strict=True)
        ]

    # files and bytes --------------------------------------------------------------------
    def predict_bytes(self, name: str, data: bytes, tta: int = 1, crop: str = "auto") -> dict:
        """One record for an uploaded file's bytes (as `predict`)."""
        tta, crop = check_tta(tta), check_crop_mode(crop)
        try:
            plane, cropped = prepare_bytes(data, name, self.image_size, crop)
        except BrainMRIError as exc:
            return failed_record(name, exc)
        return self._records([(name, plane, cropped)], tta)[0]

    def predict(
        self, path: str | Path | list[str | Path], tta: int = 1, crop: str = "auto"
    ) -> dict | list[dict]:
        """A record for one file, or a list of records (in order) for a list of files.

        A record is a dict: `path`, `status` ("ok" | "rejected" | "error"), `reason` (None
        when ok), `label` and `probability` (the top class and its calibrated probability; None
        unless ok), `probabilities` ({class: p}; empty for errors and out-of-distribution
        rejections, kept for "uncertain" ones under `min_confidence`), `ood_score`, `cropped`.
        `tta`: test-time augmentation views averaged, 1 (plain) to 5. `crop`: auto | on | off.

        Paths are files: a folder gets an `error` record. To take folders as `brainmri predict`
        does (walked recursively for image and DICOM files), expand them first with
        `brainmri.infer.predict.expand_inputs([Path("scans")])`. A bad `tta` or `crop` raises
        BrainMRIError; a bad file gives a record, never an exception.
        """
        tta, crop = check_tta(tta), check_crop_mode(crop)
        if isinstance(path, (str, Path)):
            try:
                data = read_input(path)
            except BrainMRIError as exc:
                return failed_record(str(path), exc)
            return self.predict_bytes(str(path), data, tta, crop)
        return list(self.stream(path, tta, crop))

    def stream(
        self,
        paths: Iterable[str | Path],
        tta: int = 1,
        crop: str = "auto",
        workers: int | None = None,
        prefetch: int | None = None,
    ) -> Iterator[dict]:
        """Records in input order (as `predict`); files decoded by a thread pool at most
        `prefetch` ahead. A bad `tta` or `crop` raises BrainMRIError here, before any file."""
        tta, crop = check_tta(tta), check_crop_mode(crop)
        return self._stream(paths, tta, crop, workers, prefetch or 4 * self.batch_size)

    def _stream(
        self, paths: Iterable[str | Path], tta: int, crop: str, workers: int | None, prefetch: int
    ) -> Iterator[dict]:
        pending: list[dict | tuple[str, np.ndarray, bool]] = []
        n_planes = 0
        for path, plane, cropped, rec in decode_stream(
            paths, self.image_size, crop, workers, prefetch
        ):
            pending.append(rec if rec is not None else (path, plane, cropped))
            n_planes += rec is None
            if n_planes >= self.batch_size:
                yield from self._flush(pending, tta)
                pending, n_planes = [], 0
        yield from self._flush(pending, tta)

    def _flush(self, pending: list, tta: int) -> Iterator[dict]:
        items = [p for p in pending if isinstance(p, tuple)]
        scored = iter(self._records(items, tta) if items else [])
        for p in pending:
            yield next(scored) if isinstance(p, tuple) else p
