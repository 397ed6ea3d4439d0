"""How tests/data/hmac_v6.durable.db was made: with durable_nb as of main d13fb64 (schema 6, HMAC signatures),
the test-only secret beside it. Run from a checkout of that commit:
    PYTHONPATH=CHECKOUT python tests/data/make_hmac_log.py OUT_FOLDER
then, to keep the repository small, `sqlite3 OUT_FOLDER/hmac_v6.durable.db "PRAGMA wal_checkpoint(TRUNCATE);
PRAGMA journal_mode=DELETE; PRAGMA page_size=4096; VACUUM;"` (rows unchanged; 128 KiB).
tests/test_old_logs.py runs the same cells (HMAC_CELLS) against a copy of the log it wrote."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Each cell, by --name. `evil`'s value writes the file PWNED (in the working directory) when unpickled.
HMAC_CELLS = {
    "safe": "import numpy as np\narr = np.arange(5)",
    "point": "class Point:\n    def __init__(self, x):\n        self.x = x\np = Point(7)",
    "evil": "import builtins\nclass Evil:\n    def __reduce__(self):\n        return (builtins.open, ('PWNED', 'w'))\n"
            "evil = Evil()",
    "activity": "import durable_nb\n@durable_nb.activity\ndef box(n):\n    return Point(n)\nb = box(3).x",
}


def main(folder: Path) -> None:
    import atexit

    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    import durable_nb
    from durable_nb import session

    os.environ["DURABLE_NB_SECRET_FILE"] = str(folder / "hmac_v6.secret")
    os.chdir(folder)
    cfg = Config()
    cfg.HistoryManager.hist_file = ":memory:"
    ip = InteractiveShell.instance(config=cfg)
    atexit.unregister(ip.atexit_operations)
    ip.run_cell("%load_ext durable_nb")
    ip.run_cell("%config DurableMagics.db = 'hmac_v6.durable.db'")
    for name, code in HMAC_CELLS.items():
        result = ip.run_cell(f"%%durable --name {name}\n{code}")
        assert result.success, result.error_in_exec
    session.close_log()
    print(durable_nb.__file__)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
