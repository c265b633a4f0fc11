"""The inference core: one graph, two runtimes (ONNX Runtime, PyTorch), the Classifier API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_runs_without_torch

from brainmri import CLASS_NAMES, Classifier
from brainmri.data.cache import decode_images
from brainmri.errors import BrainMRIError
from brainmri.infer.core import (
    load_for_inference,
    resolve_device,
    resolve_runtime,
    torch_threads,
)
from brainmri.infer.records import decode_stream
from brainmri.model.checkpoint import add_extra_tensors, load_model, shipped_model_path


@pytest.fixture(scope="module")
def runtimes(onnx_cache):
    return Classifier(runtime="onnx"), Classifier(runtime="torch", device="cpu")


def _test_paths(root: Path, per_class: int) -> list[tuple[Path, str]]:
    return [
        (p, c) for c in CLASS_NAMES for p in sorted((root / "Testing" / c).iterdir())[:per_class]
    ]


def test_penultimate_then_classify_is_forward():
    model, _ = load_model(shipped_model_path())
    x = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        want = model(x)
        got = model.classify(model.penultimate(x))
        members = getattr(model, "members", [model])  # an ensemble, or one classifier
        assert members[0].penultimate(x).shape == (3, members[0].dense.out_features)
    assert model.penultimate(x).shape[1] == sum(m.dense.out_features for m in members)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_runtimes_agree_on_real_images(small_benchmark: Path, runtimes):
    onnx, torch_rt = runtimes
    assert (onnx.runtime, torch_rt.runtime) == ("onnx", "torch")
    items = _test_paths(small_benchmark, 12)
    paths = [p for p, _ in items]
    for tta in (1, 2):
        a, b = onnx.predict(paths, tta=tta), torch_rt.predict(paths, tta=tta)
        assert [(r["status"], r["label"]) for r in a] == [(r["status"], r["label"]) for r in b]
        diff = max(
            abs(ra["probabilities"][c] - rb["probabilities"][c])
            for ra, rb in zip(a, b, strict=True)
            if ra["status"] == "ok"
            for c in CLASS_NAMES
        )
        assert diff <= 1e-4
    # the input guard may refuse a benchmark image or two (it accepts ~99 % of the split)
    ok = [(r, c) for r, (_, c) in zip(a, items, strict=True) if r["status"] == "ok"]
    assert len(ok) >= 44 and sum(r["label"] == c for r, c in ok) >= len(ok) - 2  # of 48
    assert all(r["reason"] is None for r, _ in ok)
    assert all(r["reason"] for r in a if r["status"] != "ok")


def test_run_matches_the_evaluation_path(small_benchmark: Path, runtimes):
    paths = [p for p, _ in _test_paths(small_benchmark, 2)]
    loaded = load_for_inference(shipped_model_path(), "cpu")
    images = decode_images(paths, loaded.image_size, workers=1)
    want = loaded.probs(images, tta=3)
    for clf in runtimes:
        out = clf.run(images, tta=3)
        assert out["logits"].shape == (3, len(paths), len(CLASS_NAMES))
        assert out["features"].shape[0] == len(paths)
        assert isinstance(out["probs"], np.ndarray)  # numpy out, whatever the runtime
        np.testing.assert_allclose(out["probs"], want.numpy(), atol=1e-5, rtol=0)


def test_torch_threads_is_scoped():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
        with torch_threads(1):  # nested: nothing to change, nothing to restore
            pass
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("restored on the way out")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_onnx_runtime_preprocesses_on_one_torch_thread(
    small_benchmark: Path, runtimes, monkeypatch
):
    """ONNX Runtime has the cores; PyTorch's preprocessing (TTA views; the plain view needs
    none) runs on one thread meanwhile and the process's own setting is back afterwards. The
    PyTorch runtime keeps its threads."""
    import brainmri.data.transforms as transforms

    seen = []
    views = transforms.tta_views
    monkeypatch.setattr(
        transforms, "tta_views", lambda x, n: (seen.append(torch.get_num_threads()), views(x, n))[1]
    )
    paths = [p for p, _ in _test_paths(small_benchmark, 1)]
    images = decode_images(paths, runtimes[0].image_size, workers=1)
    before = torch.get_num_threads()
    for clf in runtimes:
        clf.run(images, tta=2)
        assert torch.get_num_threads() == before
    assert seen == [1, before]


def test_predict_single_path_bytes_and_failures(small_benchmark: Path, runtimes, tmp_path: Path):
    clf = runtimes[0]
    path = _test_paths(small_benchmark, 1)[0][0]
    one = clf.predict(path)
    assert isinstance(one, dict) and one["status"] in ("ok", "rejected")
    assert set(one) >= {"path", "status", "reason", "label", "probability", "probabilities",
                        "ood_score", "cropped"}  # fmt: skip
    same = clf.predict_bytes(path.name, path.read_bytes())
    assert same["probabilities"] == one["probabilities"] and same["path"] == path.name
    assert same["ood_score"] == one["ood_score"] and same["status"] == one["status"]
    missing = clf.predict(tmp_path / "missing.png")
    assert missing["status"] == "error" and "no such file" in missing["reason"]
    assert missing["label"] is None and missing["probability"] is None
    bad = clf.predict_bytes("bad.jpg", b"not an image")
    assert bad["status"] in ("error", "rejected") and bad["reason"]


@pytest.mark.parametrize("tta", [0, -2, 6, 7, "3", 2.5, True])
def test_every_entry_point_refuses_a_bad_tta_naming_the_range(small_benchmark: Path, runtimes, tta):
    clf = runtimes[0]
    path = _test_paths(small_benchmark, 1)[0][0]
    planes = np.zeros((1, 1, clf.image_size, clf.image_size), np.uint8)
    calls = {
        "predict": lambda: clf.predict(path, tta=tta),
        "predict list": lambda: clf.predict([path], tta=tta),
        "predict_bytes": lambda: clf.predict_bytes(path.name, path.read_bytes(), tta=tta),
        "stream": lambda: clf.stream(iter([path]), tta=tta),  # at the call, before any file
        "run": lambda: clf.run(planes, tta=tta),
    }
    for name, call in calls.items():
        with pytest.raises(BrainMRIError, match="from 1 to 5"):
            call()
            pytest.fail(f"{name} took tta={tta!r}")


def test_predict_on_a_folder_points_to_expand_inputs(small_benchmark: Path, runtimes):
    from brainmri.infer.predict import expand_inputs

    clf = runtimes[0]
    folder = small_benchmark / "Testing" / "glioma"
    rec = clf.predict(folder)
    assert rec["status"] == "error" and "is a folder" in rec["reason"]
    doc = Classifier.predict.__doc__ or ""
    assert "brainmri.infer.predict.expand_inputs" in doc and "1 (plain) to 5" in doc
    for key in ("path", "status", "reason", "label", "probability", "probabilities",
                "ood_score", "cropped"):  # fmt: skip
        assert f"`{key}`" in doc
    recs = clf.predict(expand_inputs([folder])[:3])  # the way the docstring says
    assert [r["path"] for r in recs] == [str(p) for p in sorted(folder.iterdir())[:3]]


def test_stream_keeps_order_and_reads_a_bounded_number_ahead(small_benchmark: Path, runtimes):
    clf = runtimes[0]
    good = [p for p, _ in _test_paths(small_benchmark, 2)]
    paths = [good[0], Path("/nonexistent/a.png"), *good[1:], Path("/nonexistent/b.png")]
    recs = list(clf.stream(paths))
    assert [r["path"] for r in recs] == [str(p) for p in paths]
    assert [r["status"] == "error" for r in recs] == [False, True, *[False] * (len(good) - 1), True]
    assert [r["ood_score"] for r in recs if r["status"] != "error"] == [
        r["ood_score"] for r in clf.predict(good)
    ]

    taken = []

    def source():
        for p in good * 20:
            taken.append(p)
            yield p

    stream = decode_stream(source(), 64, prefetch=5, workers=2)
    next(stream)
    assert len(taken) <= 6  # the first result and at most `prefetch` files in flight
    stream.close()


def test_ood_score_comes_from_the_graph_and_rejects(
    small_benchmark: Path, runtimes, tmp_path: Path
):
    from brainmri.infer.guard import fit_depths, guard_features

    torch_rt = runtimes[1]
    items = _test_paths(small_benchmark, 6)
    images = decode_images([p for p, _ in items], torch_rt.image_size, workers=1)
    labels = torch.tensor([CLASS_NAMES.index(c) for _, c in items])
    loaded = load_for_inference(shipped_model_path(), "cpu")
    feats, _ = guard_features(loaded.model, images, loaded.intensity, loaded.channels_last)
    stats, scorer = fit_depths(feats, labels, feats, len(CLASS_NAMES))
    guarded = tmp_path / "guarded.safetensors"
    guarded.write_bytes(shipped_model_path().read_bytes())
    add_extra_tensors(guarded, stats, {"guard": {"ood_threshold": 1e9}})

    onnx_g, torch_g = Classifier(guarded, "onnx"), Classifier(guarded, "torch", "cpu")
    want = scorer(feats)
    for clf in (onnx_g, torch_g):
        got = clf.run(images)["ood_score"]
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-3, atol=1e-2)
    assert all(r["status"] == "ok" for r in onnx_g.predict([p for p, _ in items[:4]]))
    assert "ood_score" in onnx_g.backend.output_names

    add_extra_tensors(guarded, stats, {"guard": {"ood_threshold": 0.0}})
    rec = Classifier(guarded, "torch", "cpu").predict(items[0][0])
    assert rec["status"] == "rejected" and "(OOD score " in rec["reason"]
    assert rec["label"] is None and rec["probabilities"] == {} and rec["ood_score"] > 0


def test_bad_device_and_runtime_are_user_errors(tmp_path: Path):
    with pytest.raises(BrainMRIError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(BrainMRIError, match="unknown runtime"):
        resolve_runtime("tensorflow", "cpu", Path("m.safetensors"))
    with pytest.raises(BrainMRIError, match="ONNX export"):
        resolve_runtime("torch", "cpu", Path("m.onnx"))
    assert resolve_runtime("auto", "cpu", Path("m.safetensors"))[0] == "onnx"
    if not torch.cuda.is_available():
        with pytest.raises(BrainMRIError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(BrainMRIError, match="not found"):
        Classifier(tmp_path / "none.safetensors")


def test_onnx_runtime_on_a_cpu_imports_no_pytorch():
    """Classifying on ONNX Runtime on a machine without a GPU needs no PyTorch import, which
    is most of a one-file `predict` (docs/RESULTS.md §17.14-17.15)."""
    assert_runs_without_torch(
        "import numpy as np\n"
        "from brainmri import Classifier\n"
        "clf = Classifier()\n"
        "out = clf.run(np.full((2, 1, clf.image_size, clf.image_size), 60, np.uint8))\n"
        "assert out['probs'].shape == (2, 4), out['probs'].shape\n"
        "rec = clf.predict_bytes('x.png', b'not an image')\n"
        "assert rec['status'] == 'error', rec\n"
    )
