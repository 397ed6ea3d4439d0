"""A failing durable cell reads like a plain cell: its traceback and warnings show the user's code only, under the
cell's own number and line numbers (real ipykernel, the execute requests JupyterLab sends)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from durable_nb.demo import CellRun, NotebookKernel

pytestmark = pytest.mark.integration
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_of(run: CellRun) -> dict[str, object]:
    errors = [o["content"] for o in run.outputs if o["msg_type"] == "error"]
    assert len(errors) == 1, run.outputs
    return errors[0]


def traceback_text(run: CellRun) -> str:
    return ANSI.sub("", "\n".join(error_of(run)["traceback"]))  # type: ignore[arg-type]


def stderr_text(run: CellRun) -> str:
    return "".join(o["content"]["text"] for o in run.outputs
                   if o["msg_type"] == "stream" and o["content"]["name"] == "stderr")


def execute_reply_count(kernel: NotebookKernel) -> int:
    """The In[n] the next cell gets (from the Out[n] of this one)."""
    shown = kernel.execute("'next'")
    (result,) = [o for o in shown.outputs if o["msg_type"] == "execute_result"]
    return int(result["content"]["execution_count"]) + 1


CELL = """%%durable --name boom
import warnings
def helper(n):
    return 1 / n
warnings.warn("careful with n")
value = helper(0)
"""
PLAIN = """import warnings
def helper(n):
    return 1 / n
warnings.warn("careful with n")
value = helper(0)
"""


def test_failing_durable_cell_traceback_and_warning_read_like_a_plain_cell(tmp_path: Path) -> None:
    kernel = NotebookKernel(tmp_path / "nb.ipynb", env={"DURABLE_NB_SECRET_FILE": str(tmp_path / "secret")})
    try:
        kernel.execute("%load_ext durable_nb")
        number = execute_reply_count(kernel)
        durable = kernel.execute(CELL, cell_id="c-boom")
        text = traceback_text(durable)
        assert "run_cell_magic" not in text, text
        assert "skipping hidden" not in text, text
        assert "durable_nb" not in text, text
        assert f"Cell In[{number}], line 6" in text, text  # the cell's own number; line 6 as typed
        assert "value = helper(0)" in text and "return 1 / n" in text, text
        assert f"Cell In[{number}], line 4, in helper" in text, text
        assert error_of(durable)["ename"] == "ZeroDivisionError"
        # The warning names the cell's line 5 and shows its source, as a plain cell's does.
        warning = stderr_text(durable)
        assert re.search(r":5: UserWarning: careful with n\n\s+warnings.warn\(\"careful with n\"\)", warning), warning

        plain = kernel.execute(PLAIN)
        plain_text = traceback_text(plain)
        # Same frames (cell, helper) with the same lines, one line less for the missing %%durable line.
        assert [ln for ln in text.splitlines() if ln.startswith("Cell In")] == [
            re.sub(r"line (\d+)", lambda m: f"line {int(m[1]) + 1}", ln).replace(f"In[{number + 1}]",
                                                                                 f"In[{number}]")
            for ln in plain_text.splitlines() if ln.startswith("Cell In")]
        assert re.search(r":4: UserWarning: careful with n", stderr_text(plain))

        # User code that calls the magic itself keeps its own frames: only the cell's own %%durable is trimmed.
        nested = kernel.execute("def go():\n    get_ipython().run_cell_magic('durable', '', '1/0')\ngo()")
        assert "go()" in traceback_text(nested)
    finally:
        kernel.close()


def test_failing_async_durable_cell_traceback(tmp_path: Path) -> None:
    kernel = NotebookKernel(tmp_path / "nb.ipynb", env={"DURABLE_NB_SECRET_FILE": str(tmp_path / "secret")})
    try:
        kernel.execute("%load_ext durable_nb")
        number = execute_reply_count(kernel)
        run = kernel.execute("%%durable\nimport asyncio\nawait asyncio.sleep(0)\nraise KeyError('missing')")
        text = traceback_text(run)
        assert "run_cell_magic" not in text and "durable_nb" not in text, text
        assert f"Cell In[{number}], line 4" in text, text
        assert error_of(run)["ename"] == "KeyError"
    finally:
        kernel.close()
