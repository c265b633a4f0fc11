"""`brainmri serve` over real HTTP: the server runs as its own process on a free loopback port.

The hostile uploads are the cases of bench/serve_load.py (the same list fills the table in
docs/RESULTS.md). The API-key and batching checks run an in-process server around a small
stand-in engine, since they are about the HTTP layer and not the model.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import assert_runs_without_torch

from brainmri import CLASS_NAMES

REPO = Path(__file__).resolve().parents[1]
RECORD_KEYS = {
    "path", "status", "reason", "label", "probability", "probabilities", "ood_score", "cropped",
    "model_sha256", "runtime", "tta", "crop", "min_confidence",
}  # fmt: skip


def _load_bench():
    spec = importlib.util.spec_from_file_location("serve_load", REPO / "bench" / "serve_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@dataclass
class RunningServer:
    url: str
    host: str
    port: int
    proc: subprocess.Popen
    cwd: Path
    tmpdir: Path
    log: Path
    startup_files: set[Path]


@contextmanager
def running_server(tmp: Path, env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    """`python -m brainmri serve` on a free loopback port, cwd and TMPDIR in fresh folders."""
    port = bench.free_port()
    cwd, tmpdir = tmp / "cwd", tmp / "tmp"
    cwd.mkdir(parents=True)
    tmpdir.mkdir()
    full_env = {k: v for k, v in os.environ.items() if k != "BRAINMRI_API_KEY"}
    # torch keeps a compile cache under TMPDIR unless told otherwise: elsewhere, so that
    # TMPDIR shows only what uploads leave
    cache = tmp / "torch-cache"
    full_env.update({"TMPDIR": str(tmpdir), "TORCHINDUCTOR_CACHE_DIR": str(cache), **(env or {})})
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "brainmri", "serve", "--port", str(port)],
            cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited early:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"server not healthy in 240 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        startup = set(tmpdir.rglob("*"))  # what libraries wrote while loading, before any upload
        yield RunningServer(url, "127.0.0.1", port, proc, cwd, tmpdir, log, startup)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("serve")) as srv:
        yield srv


def sample_images(benchmark_dir: Path, per_class: int = 2) -> list[tuple[str, Path]]:
    return [
        (cls, f)
        for cls in CLASS_NAMES
        for f in sorted((benchmark_dir / "Testing" / cls).iterdir())[:per_class]
    ]


def assert_json_error(status: int, raw: bytes, expected: int) -> dict:
    assert status == expected, raw[:500]
    body = json.loads(raw)
    assert set(body) >= {"error", "detail"} and body["detail"], body
    text = raw.decode(errors="replace")
    assert "Traceback" not in text and 'File "' not in text
    return body


def test_health_model_page_and_docs(server: RunningServer) -> None:
    health = httpx.get(server.url + "/healthz").json()
    assert health["status"] == "ok" and health["auth"] is False
    model = httpx.get(server.url + "/v1/model").json()
    assert model["class_names"] == list(CLASS_NAMES)
    assert model["sha256"] == health["model_sha256"] and len(model["sha256"]) == 64
    assert model["recipe"]["backbone"] and model["figures"]
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "not for clinical use" in page.text.lower()
    for asset in ("/static/app.js", "/static/style.css"):
        assert httpx.get(server.url + asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # nothing external
    docs = httpx.get(server.url + "/docs")
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text  # works offline
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/predict", "/v1/explain", "/v1/model", "/healthz"} <= set(spec["paths"])
    missing = httpx.get(server.url + "/v1/nothing")
    assert_json_error(missing.status_code, missing.content, 404)
    wrong_method = httpx.get(server.url + "/v1/predict")
    assert_json_error(wrong_method.status_code, wrong_method.content, 405)


def test_predict_benchmark_images(server: RunningServer, benchmark_dir: Path) -> None:
    for cls, path in sample_images(benchmark_dir):
        r = httpx.post(server.url + "/v1/predict", files={"file": (path.name, path.read_bytes())})
        assert r.status_code == 200, r.text
        (rec,) = r.json()["records"]
        assert set(rec) == RECORD_KEYS
        assert rec["status"] == "ok" and rec["path"] == path.name
        assert rec["label"] == cls, (path, rec)
        assert abs(sum(rec["probabilities"].values()) - 1) < 1e-3
        assert rec["probability"] == max(rec["probabilities"].values())


def test_records_equal_predict_json(
    server: RunningServer, benchmark_dir: Path, tmp_path: Path
) -> None:
    """The API's records are `brainmri predict --json`'s (the path aside: a file name here)."""
    (_, image), (_, image2) = sample_images(benchmark_dir, per_class=1)[:2]
    tiny, text = tmp_path / "dot.png", tmp_path / "notes.jpg"
    tiny.write_bytes(bench.png_bytes(np.zeros((1, 1), np.uint8)))
    text.write_text("not an image")
    files = [image, image2, tiny, text]
    out = tmp_path / "records.json"
    cli = [sys.executable, "-m", "brainmri", "predict", *map(str, files), "--json", str(out)]
    subprocess.run(cli, capture_output=True, timeout=300)
    expected = json.loads(out.read_text())
    assert [r["status"] for r in expected] == ["ok", "ok", "rejected", "error"]
    for path, want in zip(files, expected, strict=True):
        r = httpx.post(server.url + "/v1/predict", files={"files": (path.name, path.read_bytes())})
        (got,) = r.json()["records"]
        assert {**got, "path": want["path"]} == want


def test_explain_returns_overlay_png(server: RunningServer, benchmark_dir: Path) -> None:
    from PIL import Image

    _, path = sample_images(benchmark_dir, per_class=1)[0]
    r = httpx.post(
        server.url + "/v1/explain", files={"file": (path.name, path.read_bytes())}, timeout=300
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.format == "PNG" and im.width > im.height > 100  # input | overlay
    r = httpx.post(
        server.url + "/v1/explain?method=occlusion",
        files={"file": (path.name, path.read_bytes())},
        timeout=300,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    r = httpx.post(server.url + "/v1/explain?method=lime", files={"file": ("a.png", b"x")})
    assert "method must be one of" in assert_json_error(r.status_code, r.content, 400)["detail"]
    r = httpx.post(server.url + "/v1/explain", files={"file": ("dot.png", bench.png_bytes(
        np.zeros((1, 1), np.uint8)))})  # fmt: skip
    body = assert_json_error(r.status_code, r.content, 422)
    assert body["records"][0]["status"] == "rejected"
    r = httpx.post(
        server.url + "/v1/explain", files=[("files", ("a.png", b"x")), ("files", ("b.png", b"y"))]
    )
    assert_json_error(r.status_code, r.content, 400)


def test_unknown_query_parameters_are_refused(server: RunningServer) -> None:
    """A CLI-only or misspelt option is a 400 naming it, not silently ignored; errors from the
    gate and from the app are the same compact JSON."""
    r = httpx.post(server.url + "/v1/predict?min_confidence=0.9", files={"file": ("a.png", b"x")})
    detail = assert_json_error(r.status_code, r.content, 400)["detail"]
    assert "'min_confidence'" in detail and "takes: tta, crop" in detail
    r = httpx.post(server.url + "/v1/explain?method=gradcam&tta=5",
                   files={"file": ("a.png", b"x")})  # fmt: skip
    detail = assert_json_error(r.status_code, r.content, 400)["detail"]
    assert "'tta'" in detail and "takes: method, class, crop" in detail
    r = httpx.post(server.url + "/v1/predict", content=b"{}",
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 415 and b'{"error":"' in r.content


def framed_png(path: Path) -> bytes:
    """A benchmark slice (already cropped) pasted into a 512-px black canvas: the wide frame
    `--crop auto` cuts away (as tests/test_crop.py's real-image check)."""
    from PIL import Image

    with Image.open(path) as im:
        gray = np.array(im.convert("L"))
    canvas = np.zeros((512, 512), np.uint8)
    canvas[144 : 144 + gray.shape[0], 144 : 144 + gray.shape[1]] = gray
    return bench.png_bytes(canvas)


def post_one(server: RunningServer, query: str, name: str, data: bytes) -> dict:
    """The one record for an upload sent as `files` (200 whatever its status)."""
    r = httpx.post(server.url + "/v1/predict" + query, files={"files": (name, data)}, timeout=120)
    assert r.status_code == 200, r.text
    (rec,) = r.json()["records"]
    assert set(rec) == RECORD_KEYS
    return rec


def test_predict_tta_and_crop_options(server: RunningServer, benchmark_dir: Path) -> None:
    """`?tta=` and `?crop=` as `brainmri predict --tta/--crop`: records say what was used, and
    equal `Classifier.predict_bytes` with the same options."""
    from brainmri import Classifier

    clf = Classifier()
    _, path = sample_images(benchmark_dir, per_class=1)[0]
    data = path.read_bytes()
    plain = post_one(server, "", path.name, data)
    assert (plain["tta"], plain["crop"]) == (1, "auto")
    tta5 = post_one(server, "?tta=5", path.name, data)
    assert (tta5["tta"], tta5["crop"], tta5["status"]) == (5, "auto", "ok")
    assert tta5["probabilities"] != plain["probabilities"]
    framed = framed_png(path)
    auto = post_one(server, "?crop=auto", "framed.png", framed)
    off = post_one(server, "?crop=off&tta=1", "framed.png", framed)
    on = post_one(server, "?crop=on", path.name, data)  # cropped to its content even here
    assert (auto["crop"], auto["cropped"]) == ("auto", True)
    assert (off["crop"], off["cropped"]) == ("off", False)
    assert (on["crop"], on["cropped"]) == ("on", True)
    assert off["probabilities"] != auto["probabilities"]
    for got, name, raw, tta, crop in [
        (tta5, path.name, data, 5, "auto"), (off, "framed.png", framed, 1, "off"),
        (auto, "framed.png", framed, 1, "auto"), (on, path.name, data, 1, "on"),
    ]:  # fmt: skip
        want = clf.predict_bytes(name, raw, tta=tta, crop=crop)
        assert {k: got[k] for k in want if k != "probabilities"} == {
            k: v for k, v in want.items() if k != "probabilities"
        }
        assert got["probabilities"].keys() == want["probabilities"].keys()
        for c, p in want["probabilities"].items():
            assert abs(got["probabilities"][c] - p) < 1e-5, (c, got, want)


@pytest.mark.parametrize(
    ("query", "allowed"),
    [("?tta=0", "1, 2, 3, 4, 5"), ("?tta=6", "1, 2, 3, 4, 5"), ("?tta=abc", "1, 2, 3, 4, 5"),
     ("?tta=1.5", "1, 2, 3, 4, 5"), ("?tta=", "1, 2, 3, 4, 5"), ("?crop=maybe", "auto, on, off"),
     ("?crop=AUTO", "auto, on, off")],
)  # fmt: skip
def test_predict_bad_option_values_are_400(server: RunningServer, query: str, allowed: str) -> None:
    r = httpx.post(server.url + "/v1/predict" + query, files={"file": ("a.png", b"x")})
    detail = assert_json_error(r.status_code, r.content, 400)["detail"]
    assert f"must be one of {allowed}, got" in detail
    assert b"\n" not in r.content  # one line


def test_explain_class_and_crop_options(server: RunningServer, benchmark_dir: Path) -> None:
    """`?class=` explains that class (as `brainmri explain --class`), `?crop=` as `--crop`;
    bad values are a one-line 400 naming what is allowed."""
    cls, path = sample_images(benchmark_dir, per_class=1)[0]
    other = next(c for c in CLASS_NAMES if c != cls)
    data = path.read_bytes()

    def explain(query: str, name: str, raw: bytes) -> bytes:
        r = httpx.post(server.url + "/v1/explain" + query, files={"file": (name, raw)},
                       timeout=300)  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
        return r.content

    default = explain("", path.name, data)
    assert explain(f"?class={cls}", path.name, data) == default  # the predicted class itself
    chosen = explain(f"?class={other}&method=gradcam", path.name, data)
    assert chosen != default  # another map, and the caption names both classes
    framed = framed_png(path)
    cropped = explain("", "framed.png", framed)  # auto crops the frame away
    r = httpx.post(server.url + "/v1/explain?crop=off", files={"file": ("framed.png", framed)},
                   timeout=300)  # fmt: skip
    if r.status_code == 200:  # uncropped: the frame is in the map
        assert r.content != cropped
    else:  # or the guard sees the frame and refuses the scan as unlike the benchmark
        detail = assert_json_error(r.status_code, r.content, 422)["detail"]
        assert "OOD score" in detail, detail
    for query, allowed in [
        ("?class=tumour", ", ".join(CLASS_NAMES)), ("?class=", ", ".join(CLASS_NAMES)),
        ("?crop=sometimes", "auto, on, off"), ("?method=lime&class=glioma", "gradcam, occlusion"),
    ]:  # fmt: skip
        r = httpx.post(server.url + "/v1/explain" + query, files={"file": (path.name, data)})
        detail = assert_json_error(r.status_code, r.content, 400)["detail"]
        assert f"must be one of {allowed}, got" in detail, detail


def test_engine_runs_each_tta_of_a_batch_as_one_call(benchmark_dir: Path) -> None:
    """Uploads batched together with different `tta`s: one model call per `tta`, and every
    record as if its upload had been classified alone."""
    from brainmri.serve.engine import Engine

    engine = Engine()
    calls: list[tuple[int, int]] = []
    run = engine.classifier.run

    def counted(planes, tta=1):
        calls.append((len(planes), tta))
        return run(planes, tta)

    engine.classifier.run = counted  # type: ignore[method-assign]
    cases = sample_images(benchmark_dir, per_class=1)
    items = [engine.prepare(p.name, p.read_bytes(), "auto", t)
             for (_, p), t in zip(cases, (1, 5, 1, 3), strict=True)]  # fmt: skip
    items.insert(2, engine.prepare("notes.jpg", b"not an image", "off", 5))
    batch = engine.classify(items, remember=False)
    assert sorted(calls) == [(1, 3), (1, 5), (2, 1)]
    assert [r["tta"] for r in batch] == [1, 5, 5, 1, 3]
    assert [r["crop"] for r in batch] == ["auto", "auto", "off", "auto", "auto"]
    assert [r["path"] for r in batch] == [item.name for item in items]
    assert batch[2]["status"] == "error" and batch[2]["probabilities"] == {}
    alone = [engine.classify([item], remember=False)[0] for item in items]
    for got, want in zip(batch, alone, strict=True):
        assert (got["status"], got["label"]) == (want["status"], want["label"])
        for c, p in want["probabilities"].items():
            assert abs(got["probabilities"][c] - p) < 1e-5, (got, want)


def test_concurrent_requests_with_different_tta(server: RunningServer, benchmark_dir: Path) -> None:
    """Requests for tta 1 and 5 at once (maybe in one batch) each get their own answer."""
    _, path = sample_images(benchmark_dir, per_class=1)[1]
    data = path.read_bytes()
    alone = {t: post_one(server, f"?tta={t}", path.name, data) for t in (1, 5)}
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: post_one(server, f"?tta={1 + 4 * (i % 2)}", f"s{i}.jpg",
                                               data), range(16)))  # fmt: skip
    for i, rec in enumerate(got):
        want = alone[1 + 4 * (i % 2)]
        assert rec["path"] == f"s{i}.jpg" and rec["tta"] == want["tta"]
        for c, p in want["probabilities"].items():
            assert abs(rec["probabilities"][c] - p) < 1e-5, (rec, want)


def test_service_starts_without_pytorch_on_a_cpu() -> None:
    """On a CPU without a GPU stack, building the app (ONNX Runtime) and classifying an upload
    import no PyTorch: it waits for the first /v1/explain (Grad-CAM) or tta above 1."""
    assert_runs_without_torch(
        "import io, sys\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "from fastapi.testclient import TestClient\n"
        "from brainmri.serve.app import create_app\n"
        "from brainmri.serve.engine import Engine\n"
        "app = create_app(Engine())\n"
        "assert 'torch' not in sys.modules, 'imported by create_app(Engine())'\n"
        "yy, xx = np.mgrid[:224, :224]\n"
        "disc = np.where((yy - 112) ** 2 + (xx - 112) ** 2 < 90 ** 2, 120, 0).astype(np.uint8)\n"
        "buf = io.BytesIO()\n"
        "Image.fromarray(disc).save(buf, 'PNG')\n"
        "with TestClient(app) as client:\n"
        "    r = client.post('/v1/predict?crop=on', files={'files': ('a.png', buf.getvalue())})\n"
        "    assert r.status_code == 200, r.text\n"
        "    assert r.json()['records'][0]['crop'] == 'on', r.text\n"
        "    r = client.post('/v1/explain?class=x', files={'file': ('a.png', b'x')})\n"
        "    assert r.status_code == 400, r.text\n"
    )


def test_predict_several_files_keeps_order_and_status(
    server: RunningServer, benchmark_dir: Path
) -> None:
    cases = sample_images(benchmark_dir, per_class=1)
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for _, p in cases]
    files.insert(2, ("files", ("notes.jpg", b"not an image", "image/jpeg")))
    r = httpx.post(server.url + "/v1/predict", files=files)
    assert r.status_code == 200, r.text
    records = r.json()["records"]
    assert [rec["path"] for rec in records] == [f[1][0] for f in files]
    assert records[2]["status"] == "error" and records[2]["reason"]
    labels = [rec["label"] for i, rec in enumerate(records) if i != 2]
    assert labels == [cls for cls, _ in cases]


@pytest.mark.parametrize("case", bench.hostile_cases(), ids=lambda c: c["name"])
def test_hostile_upload_gets_json_4xx(server: RunningServer, case: dict) -> None:
    if case.get("needs_ood"):
        if httpx.get(server.url + "/v1/model").json()["ood_threshold"] is None:
            pytest.skip("the served model carries no out-of-distribution statistics")
    status, _, raw = bench.send_case(server.host, server.port, case)
    body = assert_json_error(status, raw, case["expect"])
    if status == 422:
        (rec,) = body["records"]
        assert rec["status"] in ("rejected", "error") and rec["label"] is None


def test_declared_40mb_body_refused_before_it_is_sent(server: RunningServer) -> None:
    line, body, seconds = bench.oversized_body(server.host, server.port)
    assert line.split()[1] == "413", line
    assert json.loads(body)["error"] == "too-large"
    assert seconds < 10


def test_chunked_body_over_limit_is_cut_off(server: RunningServer) -> None:
    """No Content-Length: the body is counted as it streams and refused at the limit."""
    limit = httpx.get(server.url + "/v1/model").json()["limits"]["max_body_bytes"]
    line, body = bench.chunked_over_limit(server.host, server.port, limit)
    assert line.split()[1] == "413", line
    assert json.loads(body)["error"] == "too-large"


def test_api_key_required_when_set(tmp_path: Path) -> None:
    from brainmri.serve.gate import Limits

    with inprocess_server(Limits(api_key="s3cret")) as url:
        assert httpx.get(url + "/healthz").json()["auth"] is True
        assert httpx.get(url + "/").status_code == 200
        for headers in ({}, {"X-API-Key": "wrong"}):
            r = httpx.get(url + "/v1/model", headers=headers)
            assert_json_error(r.status_code, r.content, 401)
            r = httpx.post(url + "/v1/predict", files={"file": ("a.png", b"x")}, headers=headers)
            assert_json_error(r.status_code, r.content, 401)
        assert httpx.get(url + "/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        r = httpx.post(
            url + "/v1/predict", files={"file": ("a.png", b"x")}, headers={"X-API-Key": "s3cret"}
        )
        assert r.status_code == 200 and r.json()["records"][0]["path"] == "a.png"


def test_concurrent_requests_share_batches() -> None:
    """8 clients at once: every answer belongs to its own request, and batches form."""
    from brainmri.serve.gate import Limits

    engine = StandInEngine(delay=0.02)
    with inprocess_server(Limits(), engine) as url:

        def call(i: int) -> str:
            with httpx.Client() as client:
                r = client.post(url + "/v1/predict", files={"file": (f"s{i}.png", b"x" * i)})
                return r.json()["records"][0]["path"]

        with ThreadPoolExecutor(8) as pool:
            paths = list(pool.map(call, range(64)))
        health = httpx.get(url + "/healthz").json()
    assert paths == [f"s{i}.png" for i in range(64)]
    assert health["classified"] == 64 and health["batches"] < 64
    assert max(engine.sizes) > 1


def test_full_queue_answers_503() -> None:
    from brainmri.serve.gate import Limits

    with inprocess_server(Limits(), StandInEngine(delay=0.3), max_waiting=2) as url:

        def call(i: int) -> int:
            r = httpx.post(url + "/v1/predict", files={"file": (f"s{i}.png", b"x")}, timeout=30)
            if r.status_code != 200:
                assert_json_error(r.status_code, r.content, 503)
            return r.status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(call, range(8)))
        assert 503 in codes and 200 in codes
        assert httpx.get(url + "/healthz").status_code == 200


def test_load_burst(server: RunningServer, benchmark_dir: Path) -> None:
    import asyncio

    images = [(p.name, p.read_bytes()) for _, p in sample_images(benchmark_dir)]
    reqs = [bench.build_request(server.host, server.port, n, d, None) for n, d in images]
    before = httpx.get(server.url + "/healthz").json()
    result = asyncio.run(bench.run_level(server.host, server.port, reqs, 64, 8))
    after = httpx.get(server.url + "/healthz").json()
    assert result["errors"] == 0, result["error_samples"]
    assert after["classified"] - before["classified"] == 64
    assert after["batches"] - before["batches"] < 64  # concurrent requests were batched


def test_server_up_and_nothing_written(server: RunningServer) -> None:
    """After everything above: still healthy, and no upload left a file anywhere we can see."""
    assert server.proc.poll() is None
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert list(server.cwd.iterdir()) == []
    left = set(server.tmpdir.rglob("*")) - server.startup_files
    assert left == set()
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]


# --- an in-process server around a stand-in engine (HTTP-layer tests) ----------------------


class StandInEngine:
    """Answers every upload with an "ok" record; records the batch sizes it was given."""

    sha256 = "0" * 64
    runtime = "stand-in"

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.sizes: list[int] = []

    def prepare(self, name: str, data: bytes, crop: str = "auto", tta: int = 1) -> tuple:
        return name, data, False, None

    def predict(self, items: list[tuple[str, bytes]]) -> list[dict]:
        return self.classify([self.prepare(name, data) for name, data in items])

    def classify(self, items: list[tuple]) -> list[dict]:
        self.sizes.append(len(items))
        time.sleep(self.delay)
        probs = dict.fromkeys(CLASS_NAMES, 0.25)
        return [
            {"path": name, "status": "ok", "reason": None, "label": CLASS_NAMES[0],
             "probability": 0.25, "probabilities": probs, "ood_score": None, "cropped": False}
            for name, *_ in items
        ]  # fmt: skip

    def explain(self, name: str, data: bytes, *options: object) -> tuple[dict, bytes | None]:
        return self.predict([(name, data)])[0], b"\x89PNG\r\n\x1a\n"

    def describe(self) -> dict:
        return {"file": "stand-in", "sha256": self.sha256, "class_names": list(CLASS_NAMES)}


@contextmanager
def inprocess_server(limits, engine=None, **options) -> Iterator[str]:
    import uvicorn

    from brainmri.serve.app import create_app

    port = bench.free_port()
    app = create_app(engine or StandInEngine(), limits, **options)  # type: ignore[arg-type]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline and thread.is_alive(), "in-process server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def test_site_status_warns_after_uploads_from_another_collection(
    tmp_path: Path, benchmark_dir: Path, external_dir: Path
) -> None:
    """/v1/site: nothing to judge at start; benchmark uploads read as the benchmark; uploads
    from another collection then tip the window over (infer/site_check.py)."""
    with running_server(tmp_path) as srv:
        first = httpx.get(srv.url + "/v1/site").json()
        assert first["scored"] == 0 and first["shifted"] is None
        bench_files = [f for cls in CLASS_NAMES
                       for f in sorted((benchmark_dir / "Training" / cls).iterdir())[300:306]]
        other = [f for cls in ("glioma", "meningioma", "notumor")
                 for f in sorted((external_dir / cls).iterdir())[::8][:30]]  # fmt: skip

        def post(paths: list[Path]) -> None:
            for i in range(0, len(paths), 12):
                files = [("files", (p.name, p.read_bytes())) for p in paths[i : i + 12]]
                assert httpx.post(srv.url + "/v1/predict", files=files).status_code == 200

        post(bench_files)
        quiet = httpx.get(srv.url + "/v1/site").json()
        assert quiet["scored"] >= 20 and quiet["shifted"] is False, quiet
        post(other)
        loud = httpx.get(srv.url + "/v1/site").json()
        assert loud["scored"] >= 100 and loud["shifted"] is True, loud
        assert loud["share_above_reference"] > quiet["share_above_reference"] + 0.3, loud
