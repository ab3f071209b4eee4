"""Fixtures for the server and Python-package tests: the qdit binary (./build/qdit or
$QDIT_BINARY), a private model cache, and `qdit serve` processes on loopback ports."""
import base64
import http.client
import io
import json
import os
import pathlib
import re
import signal
import subprocess
import threading
import time

import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]
QDIT = os.environ.get("QDIT_BINARY", str(ROOT / "build" / "qdit"))
TINY = "tiny-zimage-v1"


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """The built-in tiny model is written here once, not into the user's cache."""
    d = tmp_path_factory.mktemp("qdit-cache")
    os.environ["QDIT_CACHE_DIR"] = str(d)
    return d


def cli_image(tmp_path, seed, size=64, steps=2, prompt="a red fox", extra=()):
    """The pixels and PNG text of `qdit generate` with the built-in tiny model."""
    out = tmp_path / f"cli-{seed}-{size}-{steps}.png"
    subprocess.run([QDIT, "generate", "--prompt", prompt, "--width", str(size), "--height", str(size),
                    "--steps", str(steps), "--seed", str(seed), "-o", str(out), *extra],
                   check=True, capture_output=True, timeout=300)
    return Image.open(out)


class Server:
    """A `qdit serve` process on a free loopback port, its stderr collected."""

    def __init__(self, *args, key=None, env=None):
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}
        if key:
            args = ("--api-key", key, *args)
        self.proc = subprocess.Popen([QDIT, "serve", "--host", "127.0.0.1", "--port", "0", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=env)
        self.lines = []
        self.port = None
        listening = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    listening.set()
            listening.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        assert listening.wait(60) and self.port, "qdit serve did not start:\n" + "".join(self.lines)
        deadline = time.time() + 120
        while self.request("GET", "/health")[0] != 200:
            assert time.time() < deadline and self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.05)

    def wait_for_line(self, text, timeout=10):
        """Whether a line of the server's log holds `text` within `timeout` s (the log is read by a thread)."""
        deadline = time.time() + timeout
        while not any(text in line for line in self.lines):
            if time.time() > deadline:
                return False
            time.sleep(0.02)
        return True

    def request(self, method, path, body=None, headers=None, timeout=120):
        """(status, headers, parsed JSON or raw bytes); `headers` default to the API key's."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            conn.request(method, path, body=body, headers=self.auth if headers is None else headers)
            r = conn.getresponse()
            data = r.read()
            if r.getheader("Content-Type", "").startswith("application/json"):
                data = json.loads(data)
            return r.status, dict(r.getheaders()), data
        finally:
            conn.close()

    def events(self, job_id, headers=None, timeout=120):
        """The server-sent events of a job, [(event, data)], read until the stream ends."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.request("GET", f"/v1/jobs/{job_id}/events", headers=self.auth if headers is None else headers)
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
        out, event = [], None
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
        conn.close()
        return out

    def wait_job(self, job_id, states=("done", "failed", "cancelled"), timeout=120):
        deadline = time.time() + timeout
        while True:
            status, _, job = self.request("GET", f"/v1/jobs/{job_id}")
            assert status == 200, job
            if job["status"] in states:
                return job
            assert time.time() < deadline, job
            time.sleep(0.02)

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.reader.join(10)
        return rc


def decode_png(b64):
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture(scope="module")
def server():
    s = Server("--max-queue", "8", key="secret-key")
    yield s
    assert s.stop() == 0, "".join(s.lines)

