"""`pip wheel .` from a clean clone ships the prebuilt extension (no Node needed by users), and the dev
install shows it enabled."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LABEXT = "share/jupyter/labextensions/durable-nb"


@pytest.mark.integration
def test_wheel_from_a_clean_clone_contains_the_prebuilt_extension(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True)
    assert not (clone / "durable_nb" / "labextension").exists()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", ".", "-w", str(tmp_path / "dist")],
                   cwd=clone, check=True, timeout=900)
    (wheel,) = (tmp_path / "dist").glob("durable_nb-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        data = next(n.split("/data/", 1)[0] + "/data/" for n in names if "/data/" in n)
        meta = json.loads(zf.read(f"{data}{LABEXT}/package.json"))
        server_config = json.loads(zf.read(f"{data}etc/jupyter/jupyter_server_config.d/durable_nb.json"))
        install = json.loads(zf.read(f"{data}{LABEXT}/install.json"))
    assert meta["name"] == "durable-nb"
    build = meta["jupyterlab"]["_build"]
    assert {"load", "extension", "mimeExtension", "style"} <= set(build)
    assert f"{data}{LABEXT}/{build['load']}" in names
    assert server_config == {"ServerApp": {"jpserver_extensions": {"durable_nb.server": True}}}
    assert install["packageName"] == "durable_nb"
    assert "durable_nb/server.py" in names
    assert "durable_nb/log/baseline.sql" in names  # a new log is made from it
    assert not any(n.startswith("durable_nb/labextension/") or "node_modules" in n for n in names)


def test_dev_install_lists_the_extension_enabled() -> None:
    labext = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"],
                            capture_output=True, text=True, check=True)
    line = next((ln for ln in (labext.stdout + labext.stderr).splitlines() if "durable-nb" in ln), "")
    assert "enabled" in line and "OK" in line, labext.stdout + labext.stderr
    server = subprocess.run([sys.executable, "-m", "jupyter", "server", "extension", "list"],
                            capture_output=True, text=True, check=True)
    assert "durable_nb.server" in server.stdout + server.stderr
