"""`make bench`: run every benchmarks/bench_*.py module's `main()` (or only those named on the command line)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path


def main() -> None:
    wanted = set(sys.argv[1:])
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_"))
    unknown = wanted - set(names) - {n.removeprefix("bench_") for n in names}
    if unknown:
        sys.exit(f"no benchmark named {', '.join(sorted(unknown))}; choose from "
                 f"{', '.join(n.removeprefix('bench_') for n in names)}")
    failed = []
    for name in names:
        if wanted and name not in wanted and name.removeprefix("bench_") not in wanted:
            continue
        print(f"\n== {name} ==", flush=True)
        # Each module in its own process: what one leaves behind (a background WAL checkpoint of a 1 GiB log,
        # a warm allocator) must not slow down or speed up the next one's figures.
        if subprocess.run([sys.executable, "-c", f"import benchmarks.{name} as b; b.main()"]).returncode:
            failed.append(name)
    if failed:  # the others still ran: one broken benchmark does not hide every figure
        sys.exit(f"benchmark failed: {', '.join(failed)} (traceback above)")


if __name__ == "__main__":
    main()
