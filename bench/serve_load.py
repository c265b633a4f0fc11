"""Load test of `brainmri serve` over loopback: N requests at each concurrency level.

    python bench/serve_load.py [--requests 1000] [--concurrency 1 8] [--model FILE]
        [--hostile] [--serve-args "--threads 1"] [--url http://127.0.0.1:PORT]
        [--out bench/results/serve_load.json]
    python bench/serve_load.py --report bench/results/serve_load.json   # markdown tables

Without --url it starts `brainmri serve` itself on a free loopback port (the real server, as
a user would run it) and reads the server's resident memory (VmRSS) and CPU time after start,
after a warm-up at the highest concurrency and after each level. --hostile then sends the
hostile uploads (the cases of tests/test_serve.py) and records status and message of each.
Each request is POST /v1/predict with one benchmark test image (cycled through 64 of them, all
four classes) in the multipart field `file`. The client keeps one HTTP/1.1 keep-alive
connection per concurrent slot and writes pre-built requests on raw asyncio sockets, so it
costs the two shared cores as little as possible. An error is a failed connection or any
answer other than 200 with status "ok" or 422 with status "rejected" (the input guard refusing
an image is an answer, listed by file name in `rejected_by_guard`). Traffic goes to the
loopback address only, and the run is bounded by --requests and --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from brainmri.platform_info import cpu_model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "brain-tumor-mri" / "Testing"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
BOUNDARY = "brainmriloadboundary7f3a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def benchmark_images(per_class: int = 16) -> list[tuple[str, bytes]]:
    if not DATA.is_dir():
        sys.exit(f"benchmark test images not found at {DATA}")
    out = []
    for cls in CLASSES:
        for f in sorted((DATA / cls).iterdir())[:per_class]:
            out.append((f.name, f.read_bytes()))
    return out


def build_request(host: str, port: int, name: str, data: bytes, key: str | None) -> bytes:
    """One complete HTTP/1.1 multipart request (built once, sent many times)."""
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n" + (f"X-API-Key: {key}\r\n" if key else "") + "\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, server closes) of one HTTP/1.1 response with Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    body = await reader.readexactly(int(fields.get("content-length", "0")))
    return status, body, fields.get("connection", "").lower() == "close"


async def client(host: str, port: int, requests: list[bytes], todo: list[int], out: dict) -> None:
    """One keep-alive connection taking request indices from `todo` until it is empty."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while todo:
            i = todo.pop()
            t0 = time.perf_counter()
            try:
                writer.write(requests[i % len(requests)])
                await writer.drain()
                status, body, close = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError) as exc:
                out["errors"].append(f"connection: {type(exc).__name__}")
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            out["latency"].append(time.perf_counter() - t0)
            answer = json.loads(body) if status in (200, 422) else {}
            record_status = (answer.get("records") or [{}])[0].get("status")
            if status == 422 and record_status == "rejected":
                out["rejected"].add(answer["records"][0]["path"])  # the guard's answer
            elif not (status == 200 and record_status == "ok"):
                out["errors"].append(f"{status}: {body[:200]!r}")
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def run_level(host: str, port: int, requests: list[bytes], n: int, conc: int) -> dict:
    out: dict = {"latency": [], "errors": [], "rejected": set()}
    todo = list(range(n))
    t0 = time.perf_counter()
    await asyncio.gather(*(client(host, port, requests, todo, out) for _ in range(conc)))
    wall = time.perf_counter() - t0
    lat = np.array(out["latency"]) * 1000
    return {
        "concurrency": conc,
        "requests": n,
        "wall_s": round(wall, 3),
        "req_per_s": round(n / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
        "errors": len(out["errors"]),
        "rejected_by_guard": sorted(out["rejected"]),
        "error_samples": out["errors"][:5],
    }


# --- hostile uploads: the same cases in tests/test_serve.py and in the documented table -------

Part = tuple[str, str, bytes, str]  # (field, file name, bytes, content type)


def multipart(parts: list[Part]) -> tuple[str, bytes]:
    """(Content-Type header, body) of a multipart/form-data request."""
    chunks = []
    for field, name, data, ctype in parts:
        chunks.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"'
            f"\r\nContent-Type: {ctype}\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()
    return f"multipart/form-data; boundary={BOUNDARY}", body


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(side: int = 10_000) -> bytes:
    """A real decompression bomb: a side x side grey PNG of zeros (100 MP) in ~100 KB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def synthetic_jpeg(side: int = 256) -> bytes:
    """A valid JPEG of smooth synthetic content (for the truncation case)."""
    yy, xx = np.mgrid[0:side, 0:side]
    arr = (127 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def pydicom_file(name: str) -> bytes:
    """A test file shipped inside the pydicom package (never downloaded)."""
    import pydicom

    return (Path(pydicom.__file__).parent / "data" / "test_files" / name).read_bytes()


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def hostile_cases() -> list[dict]:
    """Each case: name, expected status, and either multipart `parts` or a raw `body`+`ctype`."""
    rng = np.random.default_rng(0)
    jpeg = synthetic_jpeg()
    noise16 = rng.integers(0, 65535, (128, 128), dtype=np.uint16)
    tiny = np.zeros((1, 1), np.uint8)
    rgb_noise = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    f = "file"
    return [
        {"name": "zero-byte file", "expect": 422, "parts": [(f, "empty.jpg", b"", "image/jpeg")]},
        {"name": "truncated JPEG (first 40 %)", "expect": 422,
         "parts": [(f, "cut.jpg", jpeg[: len(jpeg) * 2 // 5], "image/jpeg")]},
        {"name": "text named .jpg", "expect": 422,
         "parts": [(f, "notes.jpg", b"just some text\n" * 20, "image/jpeg")]},
        {"name": "HTML named .jpg", "expect": 422,
         "parts": [(f, "page.jpg", b"<html><script>alert(1)</script></html>", "image/jpeg")]},
        {"name": "PDF named .jpg", "expect": 422, "parts": [(f, "doc.jpg", PDF, "image/jpeg")]},
        {"name": "16-bit noise PNG", "expect": 422,
         "parts": [(f, "noise16.png", png_bytes(noise16), "image/png")]},
        {"name": "1x1 PNG", "expect": 422, "parts": [(f, "dot.png", png_bytes(tiny), "image/png")]},
        {"name": "decompression bomb (10000x10000 PNG, 100 KB)", "expect": 422,
         "parts": [(f, "bomb.png", bomb_png(), "image/png")]},
        {"name": "RGB noise PNG (not a brain MRI)", "expect": 422, "needs_ood": True,
         "parts": [(f, "noise.png", png_bytes(rgb_noise), "image/png")]},
        {"name": "DICOM of modality CT (pydicom's CT_small.dcm)", "expect": 422,
         "parts": [(f, "ct.dcm", pydicom_file("CT_small.dcm"), "application/dicom")]},
        {"name": "path-traversal file name", "expect": 400,
         "parts": [(f, "../../etc/cron.d/x.jpg", jpeg, "image/jpeg")]},
        {"name": "Windows path file name", "expect": 400,
         "parts": [(f, "..\\..\\boot.ini", jpeg, "image/jpeg")]},
        {"name": "part content type text/plain", "expect": 415,
         "parts": [(f, "scan.jpg", jpeg, "text/plain")]},
        {"name": "body not multipart (raw image/jpeg)", "expect": 415,
         "body": jpeg, "ctype": "image/jpeg"},
        {"name": "body not multipart (JSON)", "expect": 415,
         "body": b'{"file": "x"}', "ctype": "application/json"},
        {"name": "missing field (multipart, no parts)", "expect": 400, "parts": []},
        {"name": "wrong field name 'image'", "expect": 400,
         "parts": [("image", "scan.jpg", jpeg, "image/jpeg")]},
        {"name": "too many files (40)", "expect": 413,
         "parts": [("files", f"s{i}.jpg", jpeg, "image/jpeg") for i in range(40)]},
    ]  # fmt: skip


def post(host: str, port: int, path: str, ctype: str, body: bytes, key: str | None = None):
    """(status, parsed JSON or None, raw body) of one POST."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        headers = {"Content-Type": ctype, **({"X-API-Key": key} if key else {})}
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    return resp.status, parsed, raw


def send_case(host: str, port: int, case: dict, key: str | None = None):
    if "parts" in case:
        ctype, body = multipart(case["parts"])
    else:
        ctype, body = case["ctype"], case["body"]
    return post(host, port, "/v1/predict", ctype, body, key)


def oversized_body(host: str, port: int, declared: int = 40 * 2**20, sent: int = 2**20):
    """Declare a 40 MB body, send 1 MB of it, then read: (status line, bytes sent, seconds)."""
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=20) as s:
        s.sendall(head + b"\x00" * sent)
        line, body = read_reply(s)
    return line, body, time.perf_counter() - t0


def read_reply(sock: socket.socket) -> tuple[str, str]:
    """(status line, body) of one reply read off a raw socket (until Content-Length or EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                   if k.strip().lower() == "content-length"), None)  # fmt: skip
    while length is not None and len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return lines[0], body.decode("utf-8", errors="replace")


def chunked_over_limit(host: str, port: int, limit: int) -> tuple[str, str]:
    """Stream a multipart body without Content-Length (chunked) past `limit`, then read:
    (status line, body) of the reply."""
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    ).encode()
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.png"'
        "\r\nContent-Type: image/png\r\n\r\n"
    ).encode()
    size = 256 * 1024
    piece = f"{size:x}\r\n".encode() + b"a" * size + b"\r\n"
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        for _ in range(limit // size + 1):
            s.sendall(piece)
        return read_reply(s)


def run_hostile(host: str, port: int, key: str | None = None) -> list[dict]:
    """Send every hostile case; the table rows: input, status, error, detail."""
    rows = []
    for case in hostile_cases():
        status, parsed, _ = send_case(host, port, case, key)
        parsed = parsed or {}
        rows.append({"input": case["name"], "expected": case["expect"], "status": status,
                     "error": parsed.get("error"), "detail": parsed.get("detail")})  # fmt: skip
    line, body, secs = oversized_body(host, port)
    parsed = json.loads(body) if body.startswith("{") else {}
    rows.append({"input": "40 MB body (1 MB sent, then read)", "expected": 413,
                 "status": int(line.split()[1]), "error": parsed.get("error"),
                 "detail": parsed.get("detail"), "seconds": round(secs, 3)})  # fmt: skip
    limit = get_json(f"http://{host}:{port}/v1/model", key)["limits"]["max_body_bytes"]
    line, body = chunked_over_limit(host, port, limit)
    parsed = json.loads(body) if body.startswith("{") else {}
    rows.append({"input": "chunked body (no Content-Length) streaming past the limit",
                 "expected": 413, "status": int(line.split()[1]), "error": parsed.get("error"),
                 "detail": parsed.get("detail")})  # fmt: skip
    return rows


def get_json(url: str, key: str | None = None) -> dict:
    req = urllib.request.Request(url, headers={"X-API-Key": key} if key else {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def start_server(model: str | None, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "brainmri", "serve", "--port", str(port), *extra]
    if model:
        cmd += ["--model", model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            get_json(f"http://127.0.0.1:{port}/healthz")
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("server did not become healthy in 180 s")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True)
        return out.stdout.decode().strip()
    except OSError:
        return "unknown"


def measure(host: str, port: int, proc: subprocess.Popen | None, args, key: str | None) -> dict:
    """Warm-up, the load levels, optionally the hostile uploads; RSS after each step."""
    base = f"http://{host}:{port}"
    model = get_json(f"{base}/v1/model", key)
    requests = [build_request(host, port, n, d, key) for n, d in benchmark_images()]
    rss = {"after_start": rss_mib(proc.pid)} if proc else {}
    asyncio.run(run_level(host, port, requests, args.warmup, max(args.concurrency)))
    if proc:
        rss["after_warmup"] = rss_mib(proc.pid)
    levels = []
    for i, conc in enumerate(args.concurrency):
        coro = run_level(host, port, requests, args.requests, conc)
        cpu0, client0 = (cpu_seconds(proc.pid) if proc else 0.0), time.process_time()
        levels.append(asyncio.run(asyncio.wait_for(coro, args.timeout)))
        per_req = 1000 / args.requests
        levels[-1]["client_cpu_ms_per_req"] = round((time.process_time() - client0) * per_req, 2)
        if proc:
            levels[-1]["server_cpu_ms_per_req"] = round((cpu_seconds(proc.pid) - cpu0) * per_req, 2)
            seen = args.concurrency[:i].count(conc)  # repeated levels: after_c8, after_c8_2, ...
            rss[f"after_c{conc}" + (f"_{seen + 1}" if seen else "")] = rss_mib(proc.pid)
        print(json.dumps(levels[-1]), flush=True)
    health = get_json(f"{base}/healthz")
    out = {
        "model": {k: model.get(k) for k in ("file", "sha256", "runtime")},
        "images": len(requests),
        "levels": levels,
        "server_batches": {k: health.get(k) for k in ("classified", "batches")},
    }
    if args.hostile:
        out["hostile"] = run_hostile(host, port, key)
        out["alive_after_hostile"] = get_json(f"{base}/healthz")["status"] == "ok"
        if proc:
            rss["after_hostile"] = rss_mib(proc.pid)
    out["rss_mib"] = {k: round(v, 1) for k, v in rss.items()}
    return out


def markdown(result: dict) -> str:
    """The tables of docs/RESULTS.md §11 from a result file."""
    out = [
        "| concurrency | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | errors "
        "| server CPU ms/req | client CPU ms/req |",
        "|---:" * 10 + "|",
    ]
    for lv in result["levels"]:
        out.append(
            f"| {lv['concurrency']} | {lv['requests']} | {lv['req_per_s']} | {lv['p50_ms']} "
            f"| {lv['p95_ms']} | {lv['p99_ms']} | {lv['max_ms']} | {lv['errors']} "
            f"| {lv.get('server_cpu_ms_per_req', '')} | {lv.get('client_cpu_ms_per_req', '')} |"
        )
    rss = result.get("rss_mib", {})
    out += [
        "",
        "| server RSS (MiB) | " + " | ".join(rss) + " |",
        "|---|" + "---:|" * len(rss),
        "| | " + " | ".join(str(v) for v in rss.values()) + " |",
    ]
    if result.get("hostile"):
        out += ["", "| input | status | error | message |", "|---|---:|---|---|"]
        for row in result["hostile"]:
            detail = str(row["detail"]).replace("|", "\\|")
            mark = "" if row["status"] == row["expected"] else f" (expected {row['expected']})"
            out.append(f"| {row['input']} | {row['status']}{mark} | {row['error']} | {detail} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--warmup", type=int, default=100, help="requests before measuring")
    ap.add_argument("--model", default=None)
    ap.add_argument("--url", default=None, help="an already running server (loopback only)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for the whole run")
    ap.add_argument("--serve-args", default="", help="extra `brainmri serve` options")
    ap.add_argument("--hostile", action="store_true", help="also send the hostile uploads")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve_load.json")
    ap.add_argument("--report", type=Path, help="print the markdown tables of a result file")
    args = ap.parse_args()
    if args.report:
        print(markdown(json.loads(args.report.read_text())))
        return
    key = os.environ.get("BRAINMRI_API_KEY")

    load_before = [round(x, 2) for x in os.getloadavg()]
    proc = None
    if args.url:
        parsed = urlparse(args.url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            sys.exit("--url must be a loopback address")
    else:
        host, port = "127.0.0.1", free_port()
        proc = start_server(args.model, port, args.serve_args.split())
    try:
        result = measure(host, port, proc, args, key)
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)
    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, {cpu_model()}",
        **result,
        "load_average_before_after": [load_before, [round(x, 2) for x in os.getloadavg()]],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("rss_mib", "server_batches")}))
    for row in result.get("hostile", []):
        print(f"{row['status']} (expected {row['expected']})  {row['input']}: {row['detail']}")


if __name__ == "__main__":
    main()
