"""Observe many replicated logs under one S3 prefix: list them, restore the interesting ones, query them.

A log replicated by Litestream to `s3://bucket/prefix/NAME` is stored as LTX files under
`prefix/NAME/NNNN/...ltx` (NNNN = compaction level), so every folder holding such files is one log.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DurableError
from .log.connect import connect
from .replicate import S3Location, parse_s3_url, restore, s3_client

if TYPE_CHECKING:
    import pandas as pd

_LTX_KEY = re.compile(r"^(?P<root>.*?)/?\d{4}/[0-9a-fA-F]+-[0-9a-fA-F]+\.ltx$")


@dataclass(frozen=True)
class LogInfo:
    name: str  # path under the prefix, e.g. "alice/train.durable.db"
    url: str
    stored_bytes: int  # bytes of LTX files in the replica (compressed; not the restored file size)
    updated: dt.datetime  # last upload
    files: int


class Fleet:
    def __init__(
        self,
        prefix: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        force_path_style: bool | None = None,
    ) -> None:
        self.location = parse_s3_url(
            prefix, endpoint=endpoint, region=region, force_path_style=force_path_style
        )
        self.pulled: dict[str, Path] = {}

    def ls(self) -> list[LogInfo]:
        """Every log under the prefix, by name, with the size of its replica and its last update."""
        client = s3_client(self.location)
        base = f"{self.location.path}/" if self.location.path else ""
        found: dict[str, dict[str, Any]] = {}
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=base
        ):
            for obj in page.get("Contents", []):
                match = _LTX_KEY.match(obj["Key"][len(base) :])
                if match is None:
                    continue
                entry = found.setdefault(
                    match["root"], {"size": 0, "updated": obj["LastModified"], "files": 0}
                )
                entry["size"] += obj["Size"]
                entry["files"] += 1
                entry["updated"] = max(entry["updated"], obj["LastModified"])
        return [
            LogInfo(name, self._child(name).url, e["size"], e["updated"], e["files"])
            for name, e in sorted(found.items())
        ]

    def _child(self, name: str) -> S3Location:
        return self.location.child(name) if name else self.location

    def pull(
        self, out_dir: str | Path, *, match: str = "*", force: bool = False, progress: bool = True
    ) -> list[Path]:
        """Restore every log whose name matches the glob `match` into `out_dir/NAME`, with a progress bar.
        Existing files are refused unless `force`."""
        from tqdm.auto import tqdm

        out_dir = Path(out_dir)
        chosen = [info for info in self.ls() if fnmatch.fnmatch(info.name, match)]
        paths = []
        for info in tqdm(chosen, desc="restoring logs", unit="log", disable=not progress):
            target = out_dir / (info.name or Path(self.location.path).name)
            child = self._child(info.name)
            restore(
                child.url,
                target,
                endpoint=child.endpoint,
                region=child.region,
                force_path_style=child.force_path_style,
                force=force,
            )
            self.pulled[info.name] = target
            paths.append(target)
        return paths

    def history(self) -> pd.DataFrame:
        """The `executions` view of every pulled log, concatenated, with a `log` column naming each log."""
        import pandas as pd


        frames = []
        for name, path in self.pulled.items():
            conn = connect(path, readonly=True)
            try:
                frame = pd.read_sql("SELECT * FROM executions", conn)
            finally:
                conn.close()
            frame.insert(0, "log", name)
            frames.append(frame)
        if not frames:

            raise DurableError(
                f"no logs pulled from {self.location.url} yet: call .pull(DIR) first "
                "(durable-nb fleet pull URL-PREFIX -o DIR)."
            )
        return pd.concat(frames, ignore_index=True)


def fleet(
    prefix: str,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    force_path_style: bool | None = None,
) -> Fleet:
    """The logs replicated under the S3 `prefix` (s3://bucket/prefix)."""
    return Fleet(prefix, endpoint=endpoint, region=region, force_path_style=force_path_style)
