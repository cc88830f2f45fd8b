"""Helpers of the reader-study tests: image folders whose sets can be told apart by their brightness (so a test
knows the truth of what the browser shows without asking the study), and `study.py serve` as a child process on
a free loopback port, always killed at the end."""
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

ROOT = Path(__file__).resolve().parents[1]
DARK, BRIGHT = 50, 200  # the mean grey of the first set (A, real) and of the second (B, synthetic)


def write_set(folder: Path, n: int, mean: int, seed: int, prefix: str, size=(40, 32)) -> Path:
    """`n` PNGs of mean brightness `mean`, named <prefix>_<i>.png, each with a text chunk naming its prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = np.clip(rng.normal(mean, 12, size[::-1]), 0, 255).astype(np.uint8)
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"prompt {prefix} secret")
        Image.fromarray(pixels).save(folder / f"{prefix}_{i}.png", pnginfo=info)
    return folder


def is_first_set(png_bytes: bytes) -> bool:
    """True for an image of the dark set (A, real), from its pixels alone."""
    import io
    return float(np.asarray(Image.open(io.BytesIO(png_bytes)).convert("L")).mean()) < (DARK + BRIGHT) / 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python study.py serve STUDY` on 127.0.0.1:<free port>; `kill9` and `start` again keep the port."""

    def __init__(self, study: Path, port: int | None = None):
        self.study, self.port, self.process = Path(study), port or free_port(), None

    def start(self, timeout_s: float = 90.0) -> "Server":
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "study.py"), "serve", str(self.study), "--port", str(self.port)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"study.py serve exited: {self.process.stdout.read()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("study.py serve did not start listening")

    def kill9(self) -> None:
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    stop = kill9

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body) of one raw request: the path is sent exactly as given (no normalising)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for key, value in (headers or {}).items():
                connection.putheader(key, value)
            if body is not None and "Content-Length" not in (headers or {}) and \
                    "Transfer-Encoding" not in (headers or {}):
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders()
            if body is not None:
                connection.send(body)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()
