"""Every example notebook is executed by a test (each has its own, in tests/ or tests/integration/)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_example_notebook_is_executed_by_a_test() -> None:
    tests = "".join(p.read_text() for p in ROOT.glob("tests/**/test_*.py"))
    missing = [nb.name for nb in sorted((ROOT / "example_notebooks").glob("*.ipynb")) if nb.name not in tests]
    assert not missing, f"example notebooks no test runs: {missing}"
