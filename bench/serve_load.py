#!/usr/bin/env python3
"""Load test of `qdit serve` on loopback with the built-in tiny model.

Phase 1: REQUESTS synchronous POST /v1/images/generations from CLIENTS concurrent
clients; every reply must be 200 with the image `qdit generate` makes for its seed
(no request lost, none answered twice: the server's job and image counters must
equal REQUESTS); prints p50 / p99 latency and throughput.
Phase 2: the same load on a fresh server, SIGTERM sent half-way: every request
the server accepted must still get its correct image, the others a 503 (or a
refused connection once it has exited), and the server must exit 0.

    python3 bench/serve_load.py [--qdit build/qdit] [--requests 200] [--clients 16]

Needs Pillow. Only 127.0.0.1 is contacted; every loop is bounded.
"""
import argparse
import base64
import http.client
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_server(qdit, max_queue):
    proc = subprocess.Popen([qdit, "serve", "--host", "127.0.0.1", "--port", "0", "--max-queue", str(max_queue)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port = None
    for line in proc.stderr:  # ends when the process does
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        sys.exit("qdit serve did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep the pipe drained
    for _ in range(1200):
        try:
            if call(port, "GET", "/health")[0] == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("qdit serve did not become ready")


def call(port, method, path, body=None, timeout=600):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def pixels(png_bytes):
    return Image.open(io.BytesIO(png_bytes)).convert("RGB").tobytes()


def references(qdit, seeds, size, steps, prompt):
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for s in seeds:
            path = os.path.join(d, f"{s}.png")
            subprocess.run([qdit, "generate", "--prompt", prompt, "--width", str(size), "--height", str(size),
                            "--steps", str(steps), "--seed", str(s), "-o", path], check=True, capture_output=True)
            with open(path, "rb") as f:
                out[s] = pixels(f.read())
    return out


def run_load(port, args, refs, on_reply=None):
    """Sends args.requests requests from args.clients threads; returns [(i, outcome, seconds)]."""
    def one(i):
        seed = 1000 + i % args.seeds
        body = {"prompt": args.prompt, "size": f"{args.size}x{args.size}", "num_inference_steps": args.steps,
                "seed": seed}
        t0 = time.perf_counter()
        try:
            status, data = call(port, "POST", "/v1/images/generations", body)
        except ConnectionRefusedError:
            return i, "refused", time.perf_counter() - t0
        except OSError as e:
            return i, f"lost ({e!r})", time.perf_counter() - t0
        dt = time.perf_counter() - t0
        if on_reply:
            on_reply()
        if status == 503 and json.loads(data)["error"]["code"] == "shutting_down":
            return i, "refused", dt
        if status != 200:
            return i, f"lost (HTTP {status}: {data[:200]!r})", dt
        items = json.loads(data)["data"]
        ok = len(items) == 1 and items[0]["seed"] == seed and pixels(base64.b64decode(items[0]["b64_json"])) == refs[seed]
        return i, "ok" if ok else "wrong image", dt

    with ThreadPoolExecutor(args.clients) as pool:
        return list(pool.map(one, range(args.requests)))


def metric(port, name):
    text = call(port, "GET", "/metrics")[1].decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qdit", default=os.path.join(ROOT, "build", "qdit"))
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=40, help="distinct seeds (request i uses seed 1000 + i %% seeds)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--prompt", default="a red fox in the snow")
    args = ap.parse_args()
    if args.requests > 10000 or args.clients > 256:
        sys.exit("at most 10000 requests from 256 clients")

    t0 = time.time()
    refs = references(args.qdit, [1000 + s for s in range(min(args.seeds, args.requests))], args.size, args.steps,
                      args.prompt)
    print(f"references: {len(refs)} images from qdit generate in {time.time() - t0:.1f} s")

    # Phase 1: full load.
    proc, port = start_server(args.qdit, max_queue=args.clients)
    t0 = time.perf_counter()
    results = run_load(port, args, refs)
    wall = time.perf_counter() - t0
    done_jobs, images = metric(port, 'qdit_jobs_total{status="done"}'), metric(port, "qdit_images_total")
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(120)
    bad = [(i, o) for i, o, _ in results if o != "ok"]
    lat = sorted(dt for _, o, dt in results if o == "ok")
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, int(round(0.99 * len(lat))) - 1)]
    print(f"load: {args.requests} requests ({args.size}x{args.size}, {args.steps} steps) from {args.clients} clients: "
          f"{len(lat)} correct, {len(bad)} lost or wrong; server ran {int(done_jobs)} jobs, {int(images)} images; "
          f"exit {rc}")
    print(f"latency p50 {p50:.2f} s, p99 {p99:.2f} s; throughput {len(lat) / wall:.2f} images/s ({wall:.1f} s)")
    ok1 = not bad and done_jobs == args.requests and images == args.requests and rc == 0
    for i, o in bad[:10]:
        print(f"  request {i}: {o}")

    # Phase 2: SIGTERM half-way through.
    proc, port = start_server(args.qdit, max_queue=args.clients)
    replies = [0]
    lock = threading.Lock()

    def count():
        with lock:
            replies[0] += 1
            if replies[0] == args.requests // 2:
                proc.send_signal(signal.SIGTERM)

    results = run_load(port, args, refs, on_reply=count)
    rc = proc.wait(120)
    outcomes = [o for _, o, _ in results]
    ok, refused = outcomes.count("ok"), outcomes.count("refused")
    lost = [o for o in outcomes if o not in ("ok", "refused")]
    print(f"SIGTERM after {args.requests // 2} replies: {ok} accepted and answered correctly, {refused} refused "
          f"(503 or connection refused), {len(lost)} lost or wrong; exit {rc}")
    for o in lost[:10]:
        print(f"  {o}")
    ok2 = not lost and rc == 0 and ok > args.requests // 2
    print("PASS" if ok1 and ok2 else "FAIL")
    return 0 if ok1 and ok2 else 1


if __name__ == "__main__":
    sys.exit(main())
