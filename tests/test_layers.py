"""The layers contract is enforced: import-linter passes on the package and fails on one reversed import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(package_parent: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=package_parent, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"})


def test_the_package_keeps_its_layers() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_storage_importing_the_history_views_breaks_the_build(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "durable_nb", tmp_path / "durable_nb", ignore=shutil.ignore_patterns(
        "__pycache__", "labextension"))
    schema = tmp_path / "durable_nb" / "log" / "schema.py"
    schema.write_text(schema.read_text() + "\nfrom ..views import history  # a reversed arrow\n")
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert "durable_nb.log is not allowed to import durable_nb.views" in done.stdout, done.stdout[-3000:]
