"""`brainmri export`: one ONNX graph with dynamic batch and metadata, equal to the PyTorch graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from brainmri import CLASS_NAMES
from brainmri.cli import app
from brainmri.data.cache import decode_images
from brainmri.data.dedupe import file_sha256
from brainmri.data.transforms import normalize_intensity
from brainmri.infer.export import cached_export
from brainmri.infer.graph import build_graph
from brainmri.infer.onnx_runtime import OnnxBackend
from brainmri.model.checkpoint import load_model, read_metadata, shipped_model_path


@pytest.fixture(scope="module")
def exported(onnx_cache) -> Path:
    return cached_export(shipped_model_path())


def _pixels(root: Path, per_class: int, meta: dict) -> torch.Tensor:
    paths = [p for c in CLASS_NAMES for p in sorted((root / "Testing" / c).iterdir())[:per_class]]
    planes = decode_images(paths, meta["preprocessing"]["image_size"], workers=1)
    return normalize_intensity(planes.float() / 255.0, meta["preprocessing"]["intensity"])


def test_metadata_describes_the_model(exported: Path):
    import onnx

    model = onnx.load(str(exported), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    meta = read_metadata(shipped_model_path())
    assert json.loads(props["class_names"]) == list(CLASS_NAMES)
    assert float(props["temperature"]) == pytest.approx(meta["info"]["temperature"])
    assert json.loads(props["preprocessing"]) == meta["preprocessing"]
    full = json.loads(props["brainmri"])
    assert full["onnx"]["source_sha256"] == file_sha256(shipped_model_path())
    assert full["onnx"]["input"] == "pixels"
    assert [o.name for o in model.graph.output][:2] == ["logits", "features"]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # a named, dynamic batch axis


def test_the_usage_metadata_alone_reproduces_predict(small_benchmark: Path, exported: Path):
    """Following the `usage` text with PIL, numpy and ONNX Runtime only gives predict's
    probabilities on real test images."""
    import onnx
    import onnxruntime as ort
    from PIL import Image

    from brainmri.infer.core import Classifier

    model = onnx.load(str(exported), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    usage = props["usage"]
    assert model.model_version >= 1
    assert "0.5th and 99.5th percentiles" in usage and "softmax(logits / temperature)" in usage
    size = json.loads(props["preprocessing"])["image_size"]
    assert f"S = {size}" in usage
    paths = [sorted((small_benchmark / "Testing" / c).iterdir())[0] for c in CLASS_NAMES]
    rows = []
    for path in paths:
        im = Image.open(path).convert("L").resize((size, size), Image.Resampling.BILINEAR)
        v = np.asarray(im, dtype=np.float32) / 255
        a, b = np.percentile(v, [0.5, 99.5])
        rows.append(np.clip((v - a) / max(b - a, 0.001), 0, 1)[None])
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"pixels": np.stack(rows).astype(np.float32)})[0]
    z = logits / float(props["temperature"])
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    clf = Classifier(shipped_model_path(), runtime="onnx")
    for path, p in zip(paths, probs, strict=True):
        rec = clf.predict(path)
        want = np.array([rec["probabilities"][c] for c in json.loads(props["class_names"])])
        np.testing.assert_allclose(p, want, atol=2e-4)


def test_onnx_equals_the_torch_graph_on_real_images(small_benchmark: Path, exported: Path):
    model, meta = load_model(shipped_model_path())
    graph = build_graph(model, meta)
    backend = OnnxBackend(exported, threads=1)
    x = _pixels(small_benchmark, 6, meta)
    with torch.inference_mode():
        want_logits, want_feats = graph(x)
    for batch in (1, 5, len(x)):  # dynamic batch: any size runs
        got = {k: torch.from_numpy(v) for k, v in backend(x[:batch]).items()}
        torch.testing.assert_close(got["logits"], want_logits[:batch], atol=1e-4, rtol=0)
        torch.testing.assert_close(got["features"], want_feats[:batch], atol=1e-4, rtol=1e-4)
    t = meta["info"]["temperature"]
    p_onnx = torch.softmax(torch.from_numpy(backend(x)["logits"]) / t, -1).numpy()
    p_torch = torch.softmax(want_logits / t, -1).numpy()
    assert (p_onnx.argmax(1) == p_torch.argmax(1)).all()
    assert np.abs(p_onnx - p_torch).max() <= 1e-4


def test_spin_waiting_threads_give_the_same_outputs(small_benchmark: Path, exported: Path):
    """Classifier(spin_wait=True) changes how ONNX Runtime's threads wait, not what they
    compute (docs/RESULTS.md §17.13)."""
    _, meta = load_model(shipped_model_path())
    x = _pixels(small_benchmark, 4, meta)
    plain, spinning = OnnxBackend(exported, threads=2), OnnxBackend(exported, 2, spin_wait=True)
    for batch in (1, len(x)):
        a, b = plain(x[:batch]), spinning(x[:batch])
        for name in plain.output_names:
            torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)


def test_export_command(tmp_path: Path, exported: Path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    result = CliRunner().invoke(app, ["export", "--out", str(out)])
    assert result.exit_code == 2 and "--force" in result.output
    assert out.read_bytes() == b"old"
    result = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "m.txt")])
    assert result.exit_code == 2 and ".onnx" in result.output

    import brainmri.infer.export as export_mod

    def fake_export(graph, size, path):  # the real export is tested above; copy it here
        path.write_bytes(exported.read_bytes())

    monkeypatch.setattr(export_mod, "_torch_export", fake_export)
    result = CliRunner().invoke(app, ["export", "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert OnnxBackend(out).meta["class_names"] == list(CLASS_NAMES)


def test_int8_options_reach_the_quantizer(tmp_path: Path, exported: Path):
    """`quantize_static_int8`'s operator types and calibration method reach ONNX Runtime:
    convolution-only quantization leaves the head's and the guard's matrix products reading
    fp32 (docs/RESULTS.md §17.3); an unknown method is a one-line error."""
    import onnx

    from brainmri.errors import BrainMRIError
    from brainmri.infer.export import quantize_static_int8

    size = read_metadata(shipped_model_path())["preprocessing"]["image_size"]
    pixels = np.random.default_rng(0).random((4, 1, size, size), dtype=np.float32)
    with pytest.raises(BrainMRIError, match="calibration method"):
        quantize_static_int8(exported, tmp_path / "x.onnx", pixels, method="entropy")

    def int8_readers(**options) -> set[str]:  # operator types that read dequantized tensors
        out = tmp_path / "q.onnx"
        quantize_static_int8(exported, out, pixels, **options)
        graph = onnx.load(str(out)).graph
        dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return {n.op_type for n in graph.node if dq & set(n.input)}

    dense = {"MatMul", "Gemm"}
    assert dense & int8_readers()  # all operators: the head and the guard's matmuls too
    conv_only = int8_readers(op_types=["Conv"])
    assert "Conv" in conv_only and not dense & conv_only


def test_guard_only_nodes_are_what_only_ood_score_needs(exported: Path):
    """The guard's pooling and distance products feed `ood_score` alone; nothing the logits or
    the features need is among them (docs/RESULTS.md §17.8)."""
    import onnx

    from brainmri.infer.export import guard_only_nodes

    model = onnx.load(str(exported))
    names = set(guard_only_nodes(model))
    by_name = {n.name: n for n in model.graph.node}
    assert names and {by_name[n].op_type for n in names} >= {"MatMul", "ReduceMean"}
    consumed_elsewhere = {
        i for n in model.graph.node if n.name not in names for i in n.input
    } | {o.name for o in model.graph.output if o.name != "ood_score"}
    produced = {o for n in names for o in by_name[n].output}
    assert not produced & consumed_elsewhere
