"""The file-dependency check a replay makes: a cell that read 1,000 small files and one 1 GiB file, all unchanged,
against a plain os.stat of the same files (the floor: a check must not read what did not move)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.harness import median_time, report
from durable_nb import file_deps

GIB = 1 << 30


def main() -> None:
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as folder:
        root = Path(folder) / "data"  # not a tmp* file of the temporary folder: those are not dependencies
        root.mkdir()
        paths = []
        for i in range(1000):
            path = root / f"part-{i:04d}.csv"
            path.write_text(f"id,value\n{i},{i * i}\n")
            paths.append(str(path))
        big = root / "big.bin"
        with open(big, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(GIB // len(chunk)):
                f.write(chunk)
        paths.append(str(big))
        reads = file_deps.Reads(files=set(paths))
        record = median_time(lambda: (file_deps._HASHED.clear(), file_deps.record(reads, [], [], listings=False)),
                             repeat=3)
        recorded = file_deps.record(reads, [], [], listings=False)
        assert len(recorded) == 1001
        file_deps._HASHED.clear()  # a new kernel: only what the log recorded is known
        check = median_time(lambda: file_deps.changes(recorded), repeat=7)
        assert file_deps.changes(recorded) == []
        stat = median_time(lambda: [os.stat(p) for p in paths], repeat=7)
        report("dependency check, 1,000 small files + 1 GiB, unchanged", check, stat, baseline_name="os.stat",
               limit=3.0)
        report("recording those dependencies (hashing 1 GiB)", record, None)


if __name__ == "__main__":
    main()
