"""Run All of the largest corpus notebook (tests/notebooks/, most code cells) when every cell replays, against
the same notebook run plainly, in the same run of this benchmark.

The durable variant (`%load_ext durable_nb` first, `%%durable` on every other code cell; tests/corpus_runner.py)
is recorded once, untimed. Then replay and plain runs alternate: one uncounted warm-up pair, then REPEAT pairs;
each run is a fresh kernel (nbclient + ipykernel, as in tests/integration/test_corpus.py). Figures are medians.

Kernel start is EXCLUDED from both sides: a figure is the sum of the notebook's per-cell wall times (execute
request sent to reply received), which for the durable side includes its `%load_ext durable_nb` cell. The same
figures with kernel start included are printed too. A replay run where any cell did not replay is an error: the
figure would not be the one it claims to be.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import corpus_runner  # (lives with the tests, which run the same notebooks)

REPEAT = 5


def _not_replayed(result: corpus_runner.Run) -> list[str]:
    missed = []
    for position, cell in enumerate(result.nb.cells):
        if cell.metadata["corpus"].get("durable"):
            states = [s.get("state") for s in result.status_messages.get(position, [])]
            if states[-1:] != ["replayed"]:
                missed.append(f"cell {cell.metadata['corpus']['index']}: {states[-1] if states else 'no status'}")
    return missed


def main() -> None:
    source = corpus_runner.largest()
    with tempfile.TemporaryDirectory(prefix="bench_corpus_", dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        env = corpus_runner.kernel_env(root / "secret")
        plain_nb = corpus_runner.copy_notebook(source, root / "plain", corpus_runner.load(source, fingerprints=False))
        durable_nb = corpus_runner.copy_notebook(
            source, root / "durable", corpus_runner.durable_variant(corpus_runner.load(source, fingerprints=False)))
        cells = sum(c.cell_type == "code" for c in corpus_runner.load(source, fingerprints=False).cells)
        print(f"    {source.name}: {cells} code cells", flush=True)
        corpus_runner.run(durable_nb, env)  # records everything

        plain: list[corpus_runner.Run] = []
        replay: list[corpus_runner.Run] = []
        for turn in range(REPEAT + 1):
            p, r = corpus_runner.run(plain_nb, env), corpus_runner.run(durable_nb, env)
            missed = _not_replayed(r)
            if missed:
                raise RuntimeError(f"{source.name}: not everything replayed ({'; '.join(missed)})")
            if turn:  # the first pair warms the page cache and the imports' .pyc files
                plain.append(p)
                replay.append(r)

    def med(runs: list[corpus_runner.Run], with_start: bool = False) -> float:
        return statistics.median(r.run_all_seconds() + (r.kernel_start_seconds if with_start else 0) for r in runs)

    report(f"{source.stem}: plain Run All, kernel start excluded (baseline)", med(plain))
    report(f"{source.stem}: Run All, everything replays, kernel start excl.", med(replay), med(plain),
           baseline_name="plain")
    report(f"{source.stem}: Run All, everything replays, kernel start incl.", med(replay, True), med(plain, True),
           baseline_name="plain")


if __name__ == "__main__":
    main()
