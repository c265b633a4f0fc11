"""`brainmri export`: a model file -> one ONNX graph (ensemble included) with its metadata.

The exported graph is :class:`brainmri.infer.graph.InferenceGraph`: input ``pixels`` float32
``(batch, 1, S, S)`` in [0, 1] after the intensity normalization named in the metadata; outputs
``logits`` ``(batch, C)`` (before temperature), ``features`` (penultimate activations) and, when
the model file holds input-guard statistics, ``ood_score`` ``(batch,)``. The batch axis is
dynamic. Exporter: the TorchScript-based exporter (``dynamo=False``, opset 17): on this model it
gives a correct dynamic-batch graph in ~12 s, where the dynamo exporter took ~100 s for the same
numbers. The metadata (``metadata_props``) holds the model file's own metadata as JSON under
``brainmri`` plus plain keys ``class_names``, ``preprocessing``, ``temperature``,
``ood_threshold`` for readers that do not want to parse it, and ``usage``: in words, how to make
``pixels`` from an image file and read the outputs, so that the graph can be used without
brainmri. The ONNX ``model_version`` is the export format's version (``EXPORT_VERSION``).

``int8``: ONNX Runtime static quantization (QDQ, per-channel 7-bit int8 weights, uint8
activations) calibrated on 128 training images. It does not keep fp32's accuracy on the test
split (docs/RESULTS.md §9), so fp32 stays the default and the supported export.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from brainmri.data.dedupe import file_sha256
from brainmri.errors import BrainMRIError
from brainmri.infer.graph import build_graph
from brainmri.infer.onnx_cache import EXPORT_VERSION, cached_path
from brainmri.infer.ood_reason import ood_threshold
from brainmri.model.checkpoint import atomic_write, load_model

OPSET = 17
EXPORTER = f"torch.onnx (TorchScript exporter, dynamo=False), opset {OPSET}"
REDUCE_RANGE = True
"""7-bit int8 weights: avoids the u8s8 saturation of AVX2 CPUs without VNNI (ORT docs)."""


def onnx_metadata(meta: dict, source_sha: str, outputs: tuple[str, ...], int8: bool) -> dict:
    """String key/values written to the ONNX file's metadata_props."""
    full = dict(meta)
    full["onnx"] = {
        "input": "pixels",
        "input_spec": "float32 (batch, 1, S, S) in [0, 1] after preprocessing.intensity",
        "outputs": list(outputs),
        "exporter": EXPORTER,
        "export_version": EXPORT_VERSION,
        "source_sha256": source_sha,
        "int8": int8,
    }
    props = {
        "brainmri": json.dumps(full),
        "class_names": json.dumps(meta["class_names"]),
        "preprocessing": json.dumps(meta.get("preprocessing", {})),
        "temperature": str(float(meta.get("info", {}).get("temperature", 1.0))),
    }
    threshold = ood_threshold(meta)
    if threshold is not None:
        props["ood_threshold"] = str(float(threshold))
    props["usage"] = usage_text(meta, threshold is not None)
    return props


def usage_text(meta: dict, guarded: bool) -> str:
    """How to feed the graph and read it, in words (the `usage` metadata key)."""
    from brainmri.data.intensity import PCT_HI, PCT_LO

    pre = meta.get("preprocessing", {})
    size = int(pre.get("image_size", 0))
    mode = pre.get("intensity", "none")
    steps = [
        "Input 'pixels': float32 (batch, 1, S, S) with S = "
        f"{size}. For each image: decode it to 8-bit grayscale (the luminance of a colour "
        f"image); resize it to {size} x {size} (bilinear, antialiased when shrinking); v = "
        "value / 255;",
    ]
    if mode == "percentile":
        lo, hi = f"{100 * PCT_LO:g}", f"{100 * PCT_HI:g}"
        steps.append(
            f"then pixels = clip((v - a) / max(b - a, 0.001), 0, 1), where a and b are the {lo}th "
            f"and {hi}th percentiles of that image's v (linear interpolation between ranks)."
        )
    else:
        steps.append("then pixels = v.")
    steps.append(
        "(brainmri's predict first crops away a wide black frame around the head, --crop auto; "
        "images already cropped to the head need nothing.) The graph repeats the channel to "
        "three and applies the mean and std of 'preprocessing' itself. Output 'logits' is "
        "before the temperature: probabilities = "
        "softmax(logits / temperature), in the order of 'class_names'."
    )
    if guarded:
        steps.append(
            "Output 'ood_score': an input scoring above 'ood_threshold' is unlike the images "
            "the model learned from; brainmri refuses it instead of classifying it."
        )
    return " ".join(steps)


def _write_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = "brainmri 4-class brain MRI tumor classifier; not for clinical use"
    model.model_version = EXPORT_VERSION
    onnx.save(model, str(path))


def _torch_export(graph: torch.nn.Module, size: int, path: Path) -> None:
    names = list(graph.output_names)
    dynamic = {n: {0: "batch"} for n in ["pixels", *names]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            graph,
            (torch.rand(2, 1, size, size),),
            str(path),
            input_names=["pixels"],
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )


def export_onnx(
    model_path: str | Path,
    out: str | Path,
    int8: bool = False,
    calibration: np.ndarray | None = None,
    int8_options: dict | None = None,
) -> dict:
    """Write `model_path` as ONNX to `out` (fp32, or int8 with calibration planes;
    `int8_options`: keyword arguments of `quantize_static_int8`)."""
    model_path, out = Path(model_path), Path(out)
    if out.suffix.lower() != ".onnx":
        raise BrainMRIError(f"--out must end in .onnx, got {out}")
    model, meta = load_model(model_path, "cpu")
    graph = build_graph(model, meta, model_path)
    size = int(meta["preprocessing"]["image_size"])
    sha = file_sha256(model_path)
    props = onnx_metadata(meta, sha, graph.output_names, int8)

    def write(tmp: Path) -> None:
        _torch_export(graph, size, tmp)
        if int8:
            if calibration is None:
                raise BrainMRIError("int8 export needs calibration images")
            quantize_static_int8(tmp, tmp, calibration, **(int8_options or {}))
        _write_metadata(tmp, props)

    atomic_write(out, write)
    return {"out": str(out), "source_sha256": sha, "outputs": list(graph.output_names),
            "int8": int8, "exporter": EXPORTER}  # fmt: skip


def guard_only_nodes(model) -> list[str]:
    """Names of the nodes of an ONNX graph that only its `ood_score` output depends on."""
    producer = {out: node for node in model.graph.node for out in node.output}

    def ancestors(name: str) -> set[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                stack.extend(node.input)
        return seen

    outputs = [o.name for o in model.graph.output]
    if "ood_score" not in outputs:
        return []
    others = set().union(*(ancestors(o) for o in outputs if o != "ood_score"))
    return sorted(ancestors("ood_score") - others)


def quantize_static_int8(
    src: Path,
    dst: Path,
    pixels: np.ndarray,
    batch: int = 16,
    reduce_range: bool = REDUCE_RANGE,
    op_types: list[str] | None = None,
    method: str = "minmax",
    guard_fp32: bool = False,
) -> None:
    """ONNX Runtime static QDQ quantization calibrated on `pixels` (N, 1, S, S) float32.
    `op_types`: the operator types to quantize (None: every one ONNX Runtime can); `method`:
    the activation-range calibration, "minmax" or "percentile" (ONNX Runtime's 99.999);
    `guard_fp32`: leave the nodes only `ood_score` depends on (the guard's pooling and
    distances) in fp32."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise BrainMRIError(f"unknown calibration method {method!r} (one of {', '.join(methods)})")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.chunks = iter([pixels[i : i + batch] for i in range(0, len(pixels), batch)])

        def get_next(self):
            chunk = next(self.chunks, None)
            return None if chunk is None else {"pixels": chunk}

    pre = dst.with_name(dst.name + ".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        exclude = guard_only_nodes(onnx.load(str(pre))) if guard_fp32 else None
        quantize_static(
            str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            reduce_range=reduce_range, op_types_to_quantize=op_types,
            calibrate_method=methods[method], nodes_to_exclude=exclude,
        )  # fmt: skip
    finally:
        if pre.exists():
            os.unlink(pre)


def cached_export(model_path: str | Path, sha: str | None = None) -> Path:
    """The fp32 ONNX export of a model file, made once and reused (keyed by its sha256)."""
    path = cached_path(sha or file_sha256(model_path))
    if not path.is_file():
        export_onnx(model_path, path)
    return path


def calibration_pixels(data_dir: Path, meta: dict, count: int = 128, seed: int = 0) -> np.ndarray:
    """`count` Training images (seeded draw), preprocessed to graph input for int8 calibration."""
    from brainmri.data.cache import decode_images
    from brainmri.data.folders import scan_split
    from brainmri.data.transforms import normalize_planes

    train = scan_split(data_dir, "Training")
    if not train:
        raise BrainMRIError(f"int8 calibration needs Training/<class>/ images under {data_dir}")
    pick = np.random.default_rng(seed).permutation(len(train))[:count]
    size = int(meta["preprocessing"]["image_size"])
    planes = decode_images([train[i].path for i in sorted(pick)], size, desc="calibration")
    x = normalize_planes(planes, meta["preprocessing"].get("intensity", "none"))
    return x.numpy().astype(np.float32)
