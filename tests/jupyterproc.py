"""A real Jupyter server (lab, notebook or bare server) on 127.0.0.1 with a token, in a given root folder."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 60.0


@dataclass
class Jupyter:
    url: str
    token: str
    root: Path
    log_file: Path

    def get(self, path: str, *, auth: bool = True) -> tuple[int, Any]:
        headers = {"Authorization": f"token {self.token}"} if auth else {}
        request = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body or b"{}")
            except json.JSONDecodeError:
                return exc.code, {"raw": body.decode(errors="replace")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_jupyter(app: str, root: Path, logs: Path, *extra: str) -> Iterator[Jupyter]:
    """`jupyter APP` (lab / notebook / server) with a fresh token; stopped (and reaped) on exit."""
    port, token = free_port(), secrets.token_hex(16)
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"jupyter-{app}-{port}.log"
    # Per-test config, runtime, workspace and settings folders: nothing leaks in from ~/.jupyter.
    env = {**os.environ,
           "JUPYTER_CONFIG_DIR": str(logs / "config"),
           "JUPYTER_RUNTIME_DIR": str(logs / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(logs / "workspaces"),
           "JUPYTERLAB_SETTINGS_DIR": str(logs / "settings")}
    cmd = [sys.executable, "-m", "jupyter", app, "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--port-retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--allow-root", *extra]
    with log_file.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    jupyter = Jupyter(f"http://127.0.0.1:{port}", token, root, log_file)
    try:
        _wait_ready(jupyter, proc)
        yield jupyter
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(jupyter: Jupyter, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter exited with {proc.returncode}:\n{_tail(jupyter)}")
        with contextlib.suppress(OSError):
            status, _ = jupyter.get("/api/status")
            if status == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"jupyter did not answer within {STARTUP_TIMEOUT_S}s:\n{_tail(jupyter)}")


def _tail(jupyter: Jupyter) -> str:
    return jupyter.log_file.read_text(errors="replace")[-3000:]
