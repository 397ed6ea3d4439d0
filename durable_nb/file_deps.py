"""Files and directory listings a cell reads, found while it runs, so an edited data file never replays stale.

While a durable cell runs, Python's audit events say which files it opens (`open`, `os.open`, `np.load`,
`Path.read_text`, pandas' readers...) and which directories it lists (`os.listdir`, `os.scandir`, `glob`).
Native readers that bypass Python's I/O (pyarrow, polars) are found by the paths the cell names: string
constants of its code and str/Path values it reads that are files on disk. Each file is recorded as
(size, mtime_ns, content hash); before a replay a file whose size and mtime are unchanged costs one `stat`,
one that moved is hashed again (in pieces) and only a different content makes the cell run.

Files the cell wrote are kept too (with size and mtime as the cell left them): a replay needs them to exist, else
the cell runs and writes them again, as a plain Run All would (`np.save` then a cleanup `!rm` at the end of a
notebook, or a colleague's machine). Not kept: temporary files, files of the Python installation, the log itself.
"""

from __future__ import annotations

import functools
import glob
import os
import sys
import sysconfig
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from .fingerprint import fingerprint_file
from .log.journal import journal_folder

# path → (size, mtime_ns, hash) this process has hashed: a file read by many cells is hashed once.
_HASHED: dict[str, tuple[int, int, str]] = {}
_WRITE_MODES = set("wax+")
WROTE = "wrote:"  # the key prefix of a file the cell wrote, beside the files and "dir:"/"glob:" listings it read


@dataclass
class Reads:
    """What one cell touched while it ran."""

    files: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)
    listings: set[str] = field(default_factory=set)  # "dir:PATH" or "glob:PATTERN"


_ACTIVE: list[Reads] = []


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _ACTIVE:
        return
    reads = _ACTIVE[-1]
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int) or path is None:
            return
        writes = (isinstance(mode, str) and bool(_WRITE_MODES & set(mode))) or (
            mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        (reads.written if writes else reads.files).add(os.fsdecode(path))
    elif event in ("os.listdir", "os.scandir") and args and args[0] is not None and not isinstance(args[0], int):
        reads.listings.add("dir:" + os.path.abspath(os.fsdecode(args[0])))
    elif event == "glob.glob" and args:
        reads.listings.add("glob:" + os.fsdecode(args[0]))


_installed = False


class watching:
    """Context manager: the files and listings the code inside reads (nested cells each see their own)."""

    def __init__(self) -> None:
        self.reads = Reads()

    def __enter__(self) -> Reads:
        global _installed
        if not _installed:  # an audit hook cannot be removed: one for the process, idle between cells
            sys.addaudithook(_hook)
            _installed = True
        _ACTIVE.append(self.reads)
        return self.reads

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.remove(self.reads)


def record(reads: Reads, named: Iterable[object], ignore: Iterable[str], *, listings: bool) -> dict[str, Any]:
    """{path: [size, mtime_ns, hash]} and {"dir:…"/"glob:…": hash} of what the cell read, {"wrote:…": [size,
    mtime_ns]} of what it wrote, as the log keeps them. `named`: paths the cell's code names (constants, str/Path
    inputs); `ignore`: the log's own files and folders;
    `listings`: whether the cell's code lists directories itself."""
    skip = _excluded_dirs()
    ignored = {os.path.abspath(p) for p in ignore}
    # The log's folders (its activity journal): the recorder's own writes while the cell runs.
    own = tuple(p + os.sep for p in ignored if os.path.isdir(p))
    written = {os.path.abspath(p) for p in reads.written}
    candidates = {os.path.abspath(p) for p in reads.files}
    candidates |= {os.path.abspath(os.fsdecode(p)) for p in named if isinstance(p, str | os.PathLike)
                   and _plausible_path(p)}
    if candidates:  # what imports read: module code is keyed by its content where a cell uses it
        ignored |= {os.path.abspath(f) for m in list(sys.modules.values())
                    if isinstance(f := getattr(m, "__file__", None), str)}
    found: dict[str, Any] = {}
    for path in sorted(candidates - written - ignored):
        if path.endswith((".pyc", ".pyo")):
            continue
        if _incidental(path, skip) or not os.path.isfile(path):
            continue
        try:
            found[path] = list(_state(path))
        except OSError:
            continue
    for listing in sorted(reads.listings) if listings else ():
        if not _incidental(os.path.abspath(listing.partition(":")[2]), skip):
            found[listing] = _listing(listing)
    for path in sorted(written - ignored):
        if not _incidental(path, skip) and not path.startswith(own) and os.path.isfile(path):
            st = os.stat(path)
            found[WROTE + path] = [st.st_size, st.st_mtime_ns]
    return found


def changes(recorded: dict[str, Any]) -> list[str]:
    """What differs now from `recorded`, as the reasons a cell runs instead of replaying ("file x changed")."""
    out = []
    for path, then in recorded.items():
        if path.startswith(WROTE):
            out += _rewritten(path.removeprefix(WROTE))
            continue
        if path.startswith(("dir:", "glob:")):
            if _listing(path) != then:
                out.append(f"{'directory' if path.startswith('dir:') else 'files matching'} "
                           f"{_shown(path.partition(':')[2])} changed")
            continue
        try:
            now = _state(path, known=tuple(then))
        except FileNotFoundError:
            out.append(f"file {_shown(path)} is missing")
            continue
        except OSError as exc:
            out.append(f"file {_shown(path)} cannot be read ({exc.strerror})")
            continue
        if now[2] != then[2]:
            out.append(f"file {_shown(path)} changed")
    return out


def _rewritten(path: str) -> list[str]:
    """A file the cell wrote must still exist, or its replay would leave later cells without it (a notebook that
    deletes its scratch files at the end, a colleague's machine). One edited since is someone's doing: the cell
    replays, and running it would overwrite their edit."""
    return [] if os.path.exists(path) else [f"file {_shown(path)} it wrote is missing"]


def names(recorded: dict[str, Any]) -> list[str]:
    return [_shown(p.partition(":")[2] if p.startswith(("dir:", "glob:", WROTE)) else p) for p in recorded]


def _state(path: str, known: tuple[Any, ...] | None = None) -> tuple[int, int, str]:
    """(size, mtime_ns, hash): a stat when size and mtime match what is known, a hash in pieces otherwise."""
    st = os.stat(path)
    size, mtime = st.st_size, st.st_mtime_ns
    for cached in (known, _HASHED.get(path)):
        if cached is not None and cached[0] == size and cached[1] == mtime:
            return size, mtime, str(cached[2])
    digest = fingerprint_file(path)
    _HASHED[path] = (size, mtime, digest)
    return size, mtime, digest


def _listing(listing: str) -> str:
    kind, _, where = listing.partition(":")
    try:
        entries = sorted(os.listdir(where)) if kind == "dir" else sorted(glob.glob(where, recursive=True))
    except OSError:
        entries = ["<missing>"]
    return xxhash.xxh3_128_hexdigest("\0".join(entries).encode("utf-8", "surrogatepass"))


def _plausible_path(value: str | os.PathLike[str]) -> bool:
    text = os.fspath(value)
    return 0 < len(text) < 4096 and "\n" not in text and "\0" not in text and os.path.isfile(text)


def _shown(path: str) -> str:
    """Relative to the working directory when inside it: how the user wrote it, most likely."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _incidental(path: str, skip: tuple[str, ...]) -> bool:
    """Read by the machinery, not the analysis: the Python installation, /proc, caches and settings in hidden
    folders (~/.cache/matplotlib, ~/.ipython), temporary files."""
    real = os.path.realpath(path)
    if real.startswith(skip):
        return True
    folders = Path(real).parent.parts
    if any(part.startswith(".") for part in folders):
        return True
    return os.path.dirname(real) == _TEMP and os.path.basename(real).startswith("tmp")


_TEMP = os.path.realpath(tempfile.gettempdir())


@functools.cache  # a stat per folder and sysconfig's expansion, fixed for the process: not once per cell
def _excluded_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib", "data", "include") if k in paths}
    # The system's own data (time zones under /usr/share, /etc/localtime) is read by libraries as they load.
    dirs |= {sys.prefix, sys.base_prefix, "/proc", "/sys", "/dev", "/usr", "/etc", "/lib", "/lib64", "/bin", "/sbin"}
    return tuple(os.path.realpath(d).rstrip(os.sep) + os.sep for d in dirs)


def log_files(path: Path) -> list[str]:
    return [str(path), f"{path}-wal", f"{path}-shm", f"{path}-journal", str(journal_folder(path))]
