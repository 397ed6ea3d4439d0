"""example_notebooks/replicate_to_s3.ipynb, executed cell by cell through a real kernel."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import psutil
import pytest

from durable_nb.demo import run_all

pytestmark = pytest.mark.integration
NOTEBOOK = Path(__file__).parents[2] / "example_notebooks" / "replicate_to_s3.ipynb"


def processes_under(folder: Path, name: str) -> list[psutil.Process]:
    """Live `name` processes whose command line or open files mention `folder` (the notebook's temp dirs)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if not cmd or Path(cmd[0]).name != name or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        texts = [" ".join(cmd)]
        with contextlib.suppress(psutil.Error):
            texts += [f.path for f in proc.open_files()]
        if any(str(folder) in text for text in texts):
            found.append(proc)
    return found


def test_replicate_to_s3_notebook_runs(tmp_path: Path) -> None:
    work, scratch = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    nb = Path(shutil.copy(NOTEBOOK, work / NOTEBOOK.name))
    # TMPDIR puts the notebook's server root and restore folder under tmp_path, where cleanup can find them.
    env = {"DURABLE_NB_SECRET_FILE": str(tmp_path / "secret"), "TMPDIR": str(scratch)}
    try:
        runs = run_all(nb, env=env)
        failed = [(r.index, r.text()) for r in runs if r.status != "ok"]
        assert not failed, failed
        texts = [r.text() for r in runs]
        assert len(runs) == 10, texts
        assert "S3 server on http://127.0.0.1:" in texts[0]
        assert "replicating replicate_to_s3.durable.db → s3://notebooks/demo/" in texts[2]
        assert [r.durable_states() for r in runs[3:5]] == [["recorded"], ["recorded"]]
        assert "replica:" in texts[5] and "last sync" in texts[5], texts[5]
        assert "integrity_check: ok" in texts[7]
        assert "simulate" in texts[7] and "summarize" in texts[7] and "recorded" in texts[7], texts[7]
        assert runs[8].durable_states() == ["replayed"] and "simulated 1,000 random walks" in texts[8]
        assert "S3 server stopped" in texts[9]
        assert "replication of replicate_to_s3.durable.db stopped" in texts[9]
        assert not list(scratch.iterdir()), "the notebook left temporary folders behind"
        assert not processes_under(scratch, "rclone") and not processes_under(work, "litestream")
    finally:
        for proc in processes_under(scratch, "rclone") + processes_under(work, "litestream"):
            with contextlib.suppress(psutil.Error):
                proc.kill()
