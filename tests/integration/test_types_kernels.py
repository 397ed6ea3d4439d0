"""The data ecosystem's values on real kernels: a notebook in the style of the polars, pyarrow, xarray,
scipy.sparse, scikit-learn and torch user guides is recorded, the kernel restarted and Run All replays every
durable cell with the same outputs and values; a tensor recorded on a GPU this machine lacks comes back on the
CPU with a one-line note."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import nbformat
import pytest

from durable_nb.codecs import seal
from durable_nb.demo import CellRun, run_all

pytestmark = pytest.mark.integration

BUILD = """%%durable
import datetime as dt, enum, http
import numpy as np, polars as pl, pyarrow as pa, pyarrow.compute as pc, xarray as xr, pandas as pd
import scipy.sparse as sp, torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

rng = np.random.default_rng(3)
birds = pl.DataFrame({
    "species": pl.Series(["tern", "gull", "tern", "auk", "gull"], dtype=pl.Categorical),
    "wing_cm": [31.5, 42.0, None, 20.25, 44.5],
    "seen": pl.Series([dt.datetime(2024, 5, d) for d in range(1, 6)]).dt.replace_time_zone("Europe/Oslo"),
    "tags": [["a"], [], None, ["b", "c"], ["a"]],
})
per_species = birds.group_by("species").agg(pl.col("wing_cm").mean().alias("mean_wing")).sort("species")
trips = pa.table({"city": ["Oslo", "Bergen", None, "Oslo"], "km": pa.array([12, 480, 7, 3], pa.int32())})
tail = trips.slice(1)
counts = pc.value_counts(trips["city"])
times = pd.date_range("2024-01-01", periods=6, freq="D")
weather = xr.Dataset({"temp": (("time", "site"), rng.normal(5, 2, (6, 2)), {"units": "degC"})},
                     coords={"time": times, "site": ["north", "south"]}, attrs={"source": "made up"})
weather["temp"].encoding = {"dtype": np.dtype("int16"), "scale_factor": 0.01}
site_mean = weather.mean("time", keep_attrs=True)
graph = sp.coo_array((np.ones(4), ([0, 1, 2, 2], [1, 2, 0, 1])), shape=(3, 3)).tocsr()
design = sp.random(20, 8, density=0.3, format="csc", random_state=4)
X = rng.normal(size=(40, 3))
y = (X[:, 0] + X[:, 1] > 0).astype(int)
model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
state = net.state_dict()
w16 = net[0].weight.detach().to(torch.bfloat16).t()
meta = {"when": dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc), "status": http.HTTPStatus.OK,
        "sizes": (3, 4, 1), "labels": frozenset({"tern", "gull"})}
print(per_species)
print(counts.to_pylist())
"""
USE = """%%durable
predicted = model.predict(X[:6]).tolist()
reach = (graph @ graph).toarray().tolist()
warmest = str(site_mean["temp"].idxmax("site").values)
first = float(w16.float()[0, 0])
print(predicted, reach, warmest, first)
"""
FINGERPRINTS = """from durable_nb.fingerprint import fingerprint
names = ["birds", "per_species", "trips", "tail", "counts", "weather", "site_mean", "graph", "design", "model",
         "state", "w16", "meta", "predicted", "reach", "warmest", "first"]
print({n: fingerprint(globals()[n]) for n in names})
print(type(design).__name__, w16.dtype, w16.is_contiguous(), weather["temp"].encoding["scale_factor"])
"""


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in ("%load_ext durable_nb", BUILD, USE, FINGERPRINTS)]
    nbformat.write(nb, path)
    return path


def _ok(runs: list[CellRun]) -> None:
    assert [r.status for r in runs] == ["ok"] * len(runs), [r.text() for r in runs]


def _printed(run: CellRun) -> str:
    """What the cell printed and returned, without the durable status displays (which say when it ran)."""
    return "".join(o["content"]["text"] if o["msg_type"] == "stream" else o["content"]["data"].get("text/plain", "")
                   for o in run.outputs if o["msg_type"] in ("stream", "execute_result"))


def test_ecosystem_notebook_replays_after_a_restart_with_identical_outputs_and_values(tmp_path: Path) -> None:
    nb = _notebook(tmp_path / "ecosystem.ipynb")
    env = {"DURABLE_NB_SECRET_FILE": str(tmp_path / "secret"), "PYTHONHASHSEED": "1"}
    first = run_all(nb, env=env)
    _ok(first)
    assert first[1].durable_states() == ["recorded"] and first[2].durable_states() == ["recorded"]
    db = tmp_path / "ecosystem.durable.db"
    with sqlite3.connect(db) as conn:
        codecs = dict(conn.execute("SELECT name, codec FROM output WHERE kind = 'value'"))
    # Only the estimator and the torch module are pickled (signed); the rest, numpy's Generator too, is stored safely.
    assert {n for n, c in codecs.items() if c == "pickle"} == {"model", "net"}, codecs

    env["PYTHONHASHSEED"] = "777"  # a restarted kernel with another hash seed
    second = run_all(nb, env=env)
    _ok(second)
    assert second[1].durable_states() == ["replayed"] and second[2].durable_states() == ["replayed"]
    for a, b in zip(first, second, strict=True):
        assert _printed(a) == _printed(b), a.source[:40]
    assert "csc_matrix torch.bfloat16 False 0.01" in second[3].text()

    # As if the cell had run on a GPU: the same tensor recorded on cuda:0, a device this machine lacks.
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT rowid, meta FROM output WHERE name = 'w16' AND codec = 'torch'").fetchone()
        meta = {k: v for k, v in json.loads(row[1]).items() if k != "seal"}
        conn.execute("UPDATE output SET meta = ? WHERE rowid = ?", (json.dumps(seal({**meta, "device": "cuda:0"})),
                                                                    row[0]))
    third = run_all(nb, env=env)
    _ok(third)
    assert third[1].durable_states() == ["replayed"]
    notes = [line for line in third[1].text().splitlines() if "cuda:0" in line]
    assert notes == ["durable_nb: a tensor recorded on cuda:0 is restored on the CPU (no cuda:0 here)"]
    # On the CPU, with the recorded values and layout: as this fake GPU tensor was really recorded on the CPU,
    # the cells after it replay and every value hashes as it did.
    assert third[2].durable_states() == ["replayed"]
    assert _printed(third[2]) == _printed(first[2]) and _printed(third[3]) == _printed(first[3])
