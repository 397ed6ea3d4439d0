"""Torture (issue 17): a full disk in the middle of a large record, and read-only media flipped mid-session, seen
from real kernels.

The log lives on a tmpfs the test mounts with `size=` (the full disk), remounted `ro` and back (read-only
media). The kernels run as root, and root bypasses file permissions, so a `chmod` of the log proves nothing:
a read-only mount is what a user without write access, a full quota's remount or a locked USB stick look like.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from torture import assert_sound, figure, kernel_env, new_notebook, ok, recorded_cells

from durable_nb.demo import NotebookKernel

pytestmark = pytest.mark.integration


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 80 MB tmpfs, unmounted at the end: room for a 24 MB record in the WAL plus its checkpoint's copy in the
    database file once space is freed, so recovery never depends on when that checkpoint runs."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    assert done.returncode == 0, (f"these tests mount a size-limited tmpfs and need root (or CAP_SYS_ADMIN): "
                                  f"{done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], capture_output=True)
        subprocess.run(["umount", "-l", str(mount)], check=True)


def remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


def kernel_for(folder: Path, tmp_path: Path, **extra: str) -> NotebookKernel:
    folder.mkdir(exist_ok=True)
    kernel = NotebookKernel(new_notebook(folder / "nb.ipynb"), kernel_env(tmp_path / "secret", **extra))
    ok(kernel.execute("%load_ext durable_nb"))
    return kernel


def settle(kernel: NotebookKernel) -> None:
    """Wait in the kernel for its pending background checkpoints (1 s after each commit): they write pages into
    the database file, so a fill measured while one is due would leave a different amount free, or hit the
    full disk itself, depending on the machine's load."""
    ok(kernel.execute("import threading as _th\nfrom durable_nb.log import connect as _connect\n"
                      "for _t in _th.enumerate():\n    if isinstance(_t, _connect._Checkpoint):\n"
                      "        _t.join()"))


def fill(path: Path, keep_free: int) -> None:
    """Fill the filesystem of `path` until `keep_free` bytes are left (to the last byte when 0)."""
    stat = os.statvfs(path.parent)
    left = max(stat.f_bavail * stat.f_frsize - keep_free, 0)
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as out:
        try:
            while left > 0:
                left -= out.write(chunk[:left])
        except OSError as exc:
            if exc.errno != errno.ENOSPC or keep_free:
                raise


BIG = "%%durable --name big\nimport numpy as np\nbig = np.random.default_rng(2).random(3_000_000)  # 24 MB"


def test_full_disk_mid_record(small_fs: Path, tmp_path: Path) -> None:
    db = small_fs / "nb.durable.db"
    kernel = kernel_for(small_fs, tmp_path)
    faults = 0
    try:
        assert ok(kernel.execute("%%durable --name small\nsmall = 1")).durable_states() == ["recorded"]
        filler = small_fs / "filler"
        settle(kernel)
        fill(filler, 12 << 20)  # room for the `running` row, not for 24 MB
        full = ok(kernel.execute(BIG))
        status = full.durable_statuses()[-1]
        assert status["state"] == "not-replayable" and status["cell"] == "big", status
        problem = " ".join(status["problems"])
        assert str(db) in problem and "full" in problem, problem
        assert "big" in status["message"], status["message"]
        faults += 1
        shape = ok(kernel.execute("print(big.shape, small)")).text()
        assert "(3000000,) 1" in shape, "the variables stay in the kernel"
        assert_sound(db)

        # Not a byte left: small records still fit in the WAL pages the failed one freed; a big one fails
        # the same clear way, and the cells keep running.
        settle(kernel)
        fill(small_fs / "filler2", 0)
        tiny = ok(kernel.execute("%%durable --name tiny\ntiny = 'still computed'\nprint(tiny)"))
        assert "still computed" in tiny.text()
        assert tiny.durable_states() == ["recorded"] or ("not recorded" in tiny.text() and str(db) in tiny.text())
        big2 = ok(kernel.execute(BIG.replace("big", "big2")))
        assert big2.durable_statuses()[-1]["state"] == "not-replayable", big2.durable_statuses()
        assert "not recorded" in big2.durable_statuses()[-1]["message"]
        faults += 1
        assert_sound(db)

        # Space freed: the same cells record again.
        filler.unlink()
        (small_fs / "filler2").unlink()
        again = ok(kernel.execute(BIG))
        assert again.durable_states() == ["recorded"], again.durable_statuses()
        settle(kernel)  # its checkpoint copies 24 MB into the database file: done before the next record
        assert ok(kernel.execute("%%durable --name tiny\ntiny = 'recorded again'")).durable_states() == ["recorded"]
    finally:
        kernel.close()
    assert_sound(db)
    assert recorded_cells(db)[0] == "small" and recorded_cells(db)[-2:] == ["big", "tiny"]
    fresh = kernel_for(small_fs, tmp_path)
    try:
        replay = ok(fresh.execute(BIG))
        assert replay.durable_states() == ["replayed"]
        assert "24000000" in ok(fresh.execute("print(big.nbytes, float(big[-1]))")).text()
    finally:
        fresh.close()
    figure("disk_full", faults_survived=f"{faults}/2", recorded_after_space_freed=True)


def test_read_only_media_mid_session(small_fs: Path, tmp_path: Path) -> None:
    """Linux refuses to remount a filesystem read-only while a file on it is open for writing, so the cells
    here name their log with --db (opened and closed by each cell) and the media flips between two cells;
    a kernel started while the media is read-only is the other half."""
    db = small_fs / "ro.durable.db"
    kernel = kernel_for(tmp_path, tmp_path)
    faults = 0
    first = f"%%durable --db {db} --name first\nimport numpy as np\nfirst = np.arange(100_000)"
    second = f"%%durable --db {db} --name second\nsecond = first * 2\nprint(second[-1])"
    try:
        assert ok(kernel.execute(first)).durable_states() == ["recorded"]
        remount(small_fs, "ro")
        try:
            blocked = ok(kernel.execute(second))
            text = blocked.text()
            assert "199998" in text, "the cell ran"
            assert "not recorded" in text and str(db) in text and "read" in text.lower(), text
            faults += 1
            # A replay needs no write: it replays; its bookkeeping row is dropped, never raised.
            replay = ok(kernel.execute(first))
            assert replay.durable_states() == ["replayed"] or "not recorded" in replay.text(), replay.text()
            faults += 1
            assert "199998" in ok(kernel.execute("print(second[-1])")).text(), "variables stay in the kernel"
            # A kernel started now, its log on the read-only media.
            fresh = kernel_for(tmp_path / "other", tmp_path, DURABLE_NB_DB=str(small_fs / "cold.durable.db"))
            try:
                cold = ok(fresh.execute("%%durable --name cold\ncold = 7\nprint(cold)"))
                assert "7" in cold.text() and "not recorded" in cold.text(), cold.text()
                faults += 1
            finally:
                fresh.close()
        finally:
            remount(small_fs, "rw")
        again = ok(kernel.execute(second))
        assert again.durable_states() == ["recorded"], again.durable_statuses()
        third = ok(kernel.execute(f"%%durable --db {db} --name third\nthird = len(second)"))
        assert third.durable_states() == ["recorded"]
    finally:
        with contextlib.suppress(Exception):
            kernel.close()
    assert_sound(db)
    assert recorded_cells(db) == ["first", "second", "third"]
    figure("read_only_media", faults_survived=f"{faults}/3", recorded_after_rw=True)
