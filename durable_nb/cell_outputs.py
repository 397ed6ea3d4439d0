"""A cell's outputs in the log: how the names a cell bound, changed or deleted become stored rows, and how a
replay turns the rows back into the namespace with the same sharing between objects as the first run had.

- A name bound to an object another name already holds is an alias of it (`b = a`: `b is a` after replay).
- Modules and the classes and functions modules export are stored by name (codecs/reference.py).
- An array inside another visible array is stored as a view of it (sharing.py).
- Other values go through the first safe codec that takes them; what only pickle can take is pickled in one
  stream per cell, in which unchanged inputs and safely stored outputs are references by name: `fig` and the
  `ax` drawn into it, or a dict holding a DataFrame the cell also bound, come back as one graph of objects.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from . import codecs, environment, figures, settings, sharing
from .cell_log import CellLog
from .codecs import PICKLE, check_seal, decode_value, distrust, encode_safe, npy, pickle, reference, seal
from .errors import DecodeError, Unfingerprintable, UntrustedError
from .fingerprint import by_reduction, fingerprint, remember_restored
from .log.cells import StoredOutput
from .trust import shown

RESULT = "__result__"
# Rebinding these cannot be observed through an alias, so a mutation check or a reference would be wasted.
IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), frozenset, range, types.ModuleType)


def type_name(value: object) -> str:
    t = type(value)
    return t.__name__ if t.__module__ in ("builtins", "__main__") else f"{t.__module__}.{t.__qualname__}"


def ids(ns: dict[str, Any]) -> dict[str, int]:
    return dict(zip(ns, map(id, ns.values()), strict=True))


_CONTAINERS = (list, tuple, dict, set, frozenset)
_WALK_AT_MOST = 100_000  # containers looked into per value: past that, a data set of plain values, not handles


@dataclass
class _Pickled:
    name: str
    value: Any
    mutated: bool


@dataclass
class Writer:
    """Writes one execution's outputs inside the caller's transaction."""
    log: CellLog
    execution_id: int
    ns: dict[str, Any]
    before: dict[str, Any]
    inputs: dict[str, str]
    visible: Callable[[str], bool]
    formatter: Any  # the shell's display formatter, for a result that can only be shown
    problems: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    stored: int = 0
    _first_name: dict[int, str] = field(default_factory=dict)
    _visible_ids: dict[int, str] | None = None
    _references: dict[int, str] = field(default_factory=dict)
    _pickled: list[_Pickled] = field(default_factory=list)

    def write(self, changed: list[str], deleted: list[str], result: Any, shared: dict[str, Any],
              changed_settings: dict[str, Any]) -> None:
        if changed_settings:
            self._store_safe(settings.NAME, changed_settings, False)
        by_id = {i: n for n, i in ids(self.before).items()}
        moved = set(changed)

        def unchanged(value: object) -> str | None:
            """The visible name the cell left bound to `value`, if any."""
            name = by_id.get(id(value))
            return name if name is not None and name not in moved and self.visible(name) else None

        for name in changed:
            value = self.ns[name]
            mutated = self.before.get(name) is value
            # A value mutated in place is stored whole: names still pointing at it are restored in place.
            target = self._first_name.get(id(value)) or (None if mutated else unchanged(value))
            if target is not None:
                self._row(StoredOutput(name, "alias", target=target))
                continue
            self._first_name[id(value)] = name
            self._store(name, value, mutated, shared, changed)
        for name in deleted:
            self._row(StoredOutput(name, "deleted"))
        if result is not None:
            target = self._first_name.get(id(result)) or unchanged(result)
            if target is not None:
                self._row(StoredOutput(RESULT, "result", target=target), listed=False)
            elif not self._store_safe(RESULT, result, False):
                self._pickled.append(_Pickled(RESULT, result, False))
        self._write_pickled(moved)

    def _row(self, out: StoredOutput, *, listed: bool = True) -> None:
        self.log.write_output(self.execution_id, out)
        self.stored += out.size
        if listed:
            self.written.append(out.name)

    def _store(self, name: str, value: Any, mutated: bool, shared: dict[str, Any], changed: list[str]) -> None:
        target = reference.reference_of(value)
        if target is not None:
            self._row(StoredOutput(name, "module", type=type_name(value), target=target))
            return
        view = sharing.view_of(name, value, shared)
        if view is not None:
            meta = {**view.meta, "view_of": view.anchor}
            if view.anchor not in changed:
                meta["anchor_fingerprint"] = self.inputs.get(view.anchor) or fingerprint(self.ns[view.anchor])

            self._row(StoredOutput(name, "value", "npy", npy.NpyCodec.version, type_name(value), meta))
            return
        # A container holding an object another name also holds goes where references keep them one object.
        if self._shares_objects(name, value) or not self._store_safe(name, value, mutated):
            self._pickled.append(_Pickled(name, value, mutated))

    def _shares_objects(self, name: str, value: Any) -> bool:
        """Whether plain container `value` holds (at any depth) a mutable object another visible name holds:
        safe codecs would store a copy, and `d["a"] is a` would not hold after a replay."""
        if not isinstance(value, _CONTAINERS):
            return False
        if self._visible_ids is None:
            self._visible_ids = {id(v): n for n, v in self.ns.items()
                                 if not isinstance(v, IMMUTABLE) and self.visible(n)}
        todo, seen = [value], 0
        while todo and seen < _WALK_AT_MOST:
            item = todo.pop()
            seen += 1
            parts = item.values() if isinstance(item, dict) else item
            for part in parts:
                if isinstance(part, IMMUTABLE):
                    continue
                if self._visible_ids.get(id(part), name) != name:
                    return True
                if isinstance(part, _CONTAINERS):
                    todo.append(part)
        return False

    def _store_safe(self, name: str, value: Any, mutated: bool) -> bool:

        sink = self.log.blobs.sink()
        enc = encode_safe(value, sink)
        if enc is None:
            return False
        variable = name not in (RESULT, settings.NAME)  # the others are kept as results: no variable
        enc = enc.replace(meta=seal(enc.meta))
        self._row(StoredOutput(name, "value" if variable else "result", enc.codec, enc.version,
                               enc.type_name, enc.meta, enc.size, inplace=mutated,
                               blob_ids=list(sink.blob_ids)), listed=variable)
        self._references[id(value)] = f"out:{name}"
        return True

    def _sign(self, codec: str, version: int, meta: dict[str, Any], blob_ids: list[int]) -> codecs.Signed:
        hashes = [self.log.blobs.source(b).hash for b in blob_ids]
        return codecs.signature(codec, version, meta, hashes)

    def _write_pickled(self, moved: set[str]) -> None:
        """Everything only pickle takes, as one stream; a value that cannot be pickled is left out by name."""

        # Inputs the cell left alone come back as the live objects: the key vouches for their content.
        references = {id(self.ns[n]): f"ns:{n}" for n in self.inputs
                      if n not in moved and n in self.ns and not isinstance(self.ns[n], IMMUTABLE)}
        references.update(self._references)
        members = self._pickled
        if not members:
            return
        figures.settle([m.value for m in members])
        # Other visible objects the stream reaches changed with what it holds (the figure of a mutated `ax`):
        # a first pass names them as references; then they join the stream, so the graph stays one.
        reached: dict[int, str] = {}
        for n, v in self.ns.items():
            if not isinstance(v, IMMUTABLE) and n not in moved and n not in self.inputs and self.visible(n):
                for part in (v, *_parts(v)):
                    if id(part) not in references:
                        reached.setdefault(id(part), f"ns:{n}")
        while members:
            sink = self.log.blobs.sink()
            try:
                meta = PICKLE.encode_bundle([m.value for m in members], {**reached, **references}, sink)
            except Exception as exc:
                sink.discard(0)  # the blobs this attempt wrote
                members = self._drop_unpicklable(members, references, exc)
                continue
            joined = [r.removeprefix("ns:") for r in meta["references"] if r in reached.values()]
            if joined:
                sink.discard(0)
                members = members + [_Pickled(n, self.ns[n], True) for n in joined]
                reached = {i: r for i, r in reached.items() if r.removeprefix("ns:") not in joined}
                continue
            self._pickled_rows(members, meta, list(sink.blob_ids), sum(sink.sizes))
            return

    def _drop_unpicklable(self, members: list[_Pickled], references: dict[int, str],
                          exc: Exception) -> list[_Pickled]:

        bad = {m.name: why for m in members if (why := pickle.problem([m.value], references)) is not None}
        if not bad:  # only together do they fail: none of them can be stored
            bad = {m.name: str(exc) or type(exc).__name__ for m in members}
        for m in members:
            if m.name not in bad:
                continue
            if m.name == RESULT:
                self._display_only(m.value)
            else:
                self.problems.append(f"variable {m.name} ({type_name(m.value)}): cannot store it: {bad[m.name]} "
                                     f"— exclude it with --ignore {m.name}")
        return [m for m in members if m.name not in bad]

    def _display_only(self, result: Any) -> None:
        """A result that cannot be stored is recorded as what it showed."""
        data, metadata = self.formatter.format(result)
        self._row(StoredOutput(RESULT, "result", type=type_name(result),
                               meta={"bundle": {"data": data, "metadata": metadata}}), listed=False)

    def _pickled_rows(self, members: list[_Pickled], meta: dict[str, Any], blob_ids: list[int], size: int) -> None:

        holder = members[0].name
        for i, m in enumerate(members):
            if i == 0:
                row_meta, ids_, row_size = {**meta, "bundle": [x.name for x in members]}, blob_ids, size
            else:
                row_meta, ids_, row_size = {"bundle_of": holder, "index": i}, [], 0
            recorded = _recorded_fingerprint(m)
            if recorded is not None:
                row_meta["fingerprint"] = recorded
            signed = self._sign(PICKLE.name, PICKLE.version, row_meta, ids_)
            self._row(StoredOutput(m.name, "result" if m.name == RESULT else "value", PICKLE.name, PICKLE.version,
                                   type_name(m.value), row_meta, row_size, inplace=m.mutated,
                                   signature=signed.signature, blob_ids=ids_, signer=signed.signer),
                      listed=m.name != RESULT)
            environment.note_package(self.log, type_name(m.value))


_PARTS_AT_MOST = 1024  # a longer container is a data set, not a handful of handles: looking in it costs too much


def _parts(value: Any) -> list[Any]:
    """The objects a small plain container holds directly: `ax` from `fig, ax = plt.subplots(2, 3)` holds the
    axes a mutated figure's stream reaches."""
    items: list[Any]
    if isinstance(value, list | tuple | set | frozenset | dict):
        if len(value) > _PARTS_AT_MOST:
            return []
        items = list(value.values() if isinstance(value, dict) else value)
    elif sharing.is_object_array(value) and value.size <= _PARTS_AT_MOST:
        items = value.ravel().tolist()
    else:
        return []
    return [i for i in items if not isinstance(i, IMMUTABLE)]


def _recorded_fingerprint(m: _Pickled) -> str | None:
    """The fingerprint a value hashed through its reduction had: a replay that rebuilds it inexactly keeps it."""
    if m.name == RESULT or not by_reduction(m.value):
        return None
    try:
        return fingerprint(m.value)
    except Unfingerprintable:
        return None


class Restore:
    """Rebuilds one recorded execution's outputs. Everything is decoded before the namespace is touched: a
    failure leaves no half-restored state."""
    def __init__(self, log: CellLog, ns: dict[str, Any], inputs: dict[str, str],
                 imports: tuple[str, ...]) -> None:
        self.log = log
        self.ns = ns
        self.inputs = inputs  # this replay's key inputs: what the live namespace holds now
        self.imports = imports  # what the cell's import statements import: decoding may import these only
        self.final: dict[str, Any] = {}
        self.updates: dict[str, Any] = {}  # name → value to copy into the live object

    def run(self, execution_id: int) -> Any:
        with reference.cell_imports(self.imports):
            return self._run(execution_id)

    def _run(self, execution_id: int) -> Any:
        outputs = self.log.stored_outputs(execution_id)
        _check_complete(self.log, execution_id, outputs)
        check_trusted(self.log, outputs)
        deleted, aliases, views, pickled = [], [], [], []
        for out in outputs:
            if out.kind == "deleted":
                deleted.append(out.name)
            elif out.kind == "alias" or (out.kind == "result" and out.target):
                aliases.append(out)
            elif out.kind == "module":
                self.final[out.name] = reference.resolve(str(out.target), out.name)
            elif out.codec is None:
                self.final[out.name] = RecordedDisplay(out.meta["bundle"])
            elif "view_of" in out.meta:
                views.append(out)
            elif "bundle" in out.meta or "bundle_of" in out.meta:
                pickled.append(out)
            else:
                self._place(out, self._decode(out))
        for out in views:
            self._view(out)
        changed_settings = self.final.pop(settings.NAME, None)
        if changed_settings:
            settings.apply_backend(changed_settings)
        self._unpickle(pickled)
        for out in aliases:
            self.final[out.name] = self._named(str(out.target), out.name)
        result = self.final.pop(RESULT, None)
        self._apply(deleted)
        for out in pickled:
            recorded = out.meta.get("fingerprint")
            if recorded is not None and out.name in self.ns:
                with contextlib.suppress(Unfingerprintable):
                    remember_restored(self.ns[out.name], recorded)
        if changed_settings:
            settings.apply(changed_settings)
        return result

    def _decode(self, out: StoredOutput) -> Any:

        sources = [self.log.blobs.source(b) for b in out.blob_ids]

        check_seal(out.meta, _what([out]))
        with _decoding(_what([out])):  # signatures were checked before anything was read
            return decode_value(out.codec or "", out.codec_version or 0, out.meta, sources, allow_pickle=True)

    def _place(self, out: StoredOutput, value: Any) -> None:
        live = self.ns.get(out.name)
        if out.inplace and _can_update(live, value):
            self.final[out.name] = live
            self.updates[out.name] = value
        else:
            self.final[out.name] = value

    def _named(self, name: str, for_name: str) -> Any:
        if name in self.final:
            return self.final[name]
        if name in self.ns:
            return self.ns[name]
        raise DecodeError(f"variable {for_name} shared its object with {name}, which is not defined")

    def _view(self, out: StoredOutput) -> None:
        anchor_name = str(out.meta["view_of"])
        anchor = self._named(anchor_name, out.name)
        recorded = out.meta.get("anchor_fingerprint")
        if recorded is not None and anchor_name not in self.final:
            now = self.inputs.get(anchor_name) or fingerprint(anchor)
            if now != recorded:
                raise DecodeError(f"variable {out.name} was a view of {anchor_name}, which holds other values now")
        view = sharing.rebuild(out.name, anchor, out.meta)
        live = self.ns.get(out.name)
        self.final[out.name] = live if sharing.same_view(live, view) else view

    def _unpickle(self, rows: list[StoredOutput]) -> None:
        if not rows:
            return

        holder = rows[0]
        if holder.meta.get("bundle") != [r.name for r in rows]:
            raise DecodeError(f"the pickled outputs of this execution are incomplete ({holder.name}): re-run the cell")
        sources = [self.log.blobs.source(b) for b in holder.blob_ids]
        with _decoding(_what(rows)):
            values = pickle.load(holder.meta, sources, self._resolve)
        # Only once everything is unpickled: unpickling an instance re-sets its class's attributes.
        for row, value in zip(rows, values, strict=True):
            self._place(row, adopt(value, self.ns))
        figures.enable_display()

    def _resolve(self, reference_: str) -> Any:
        where, _, name = reference_.partition(":")
        if where == "out" and name in self.final:
            return self.final[name]
        if where == "ns" and name in self.ns:
            return self.ns[name]
        raise DecodeError(f"a pickled output refers to variable {name}, which is not defined")

    def _apply(self, deleted: list[str]) -> None:
        for name, value in self.final.items():
            if name in self.updates:
                _update(value, self.updates[name])
            else:
                self.ns[name] = value
        for name in deleted:
            self.ns.pop(name, None)


def _check_complete(log: CellLog, execution_id: int, outputs: list[StoredOutput]) -> None:
    """The output rows are the ones the execution lists (written in the same transaction): a row lost or renamed
    by a damaged page would otherwise replay with a hole, or under another name."""
    listed = set(log.output_names(execution_id))
    stored = {out.name for out in outputs} - {RESULT, settings.NAME}
    if listed != stored:
        raise DecodeError(f"the record of execution {execution_id} in {log.path} is inconsistent (it lists "
                          f"{', '.join(sorted(listed)) or 'no variables'}, holds "
                          f"{', '.join(sorted(stored)) or 'none'}): the log is damaged or was modified. "
                          "Nothing of it is replayed; the cell runs instead.")


def check_trusted(log: CellLog, outputs: list[StoredOutput]) -> None:
    """Raise UntrustedError unless every pickled output is signed by this user or a key this user trusts;
    checked before any value is read, so an untrusted record costs no decoding."""
    for out in outputs:
        if out.kind in ("value", "result") and out.codec is not None:
            hashes = [log.blobs.source(b).hash for b in out.blob_ids]
            reason = distrust(out.codec, out.codec_version or 0, out.meta, hashes, out.signature, out.signer,
                              shown(log))
            if reason is not None:
                raise UntrustedError(f"variable {out.name} ({out.type}): {reason}")


@contextlib.contextmanager
def _decoding(what: str) -> Iterator[None]:
    """Whatever decoding raises becomes a DecodeError naming `what`: the cell runs instead, nothing crashes."""
    try:
        yield
    except DecodeError:
        raise
    except ImportError as exc:
        raise DecodeError(f"{what} needs module {exc.name or '?'}, which cannot be imported here ({exc}); "
                          "install it to replay") from exc
    except Exception as exc:
        raise DecodeError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _what(rows: list[StoredOutput]) -> str:
    named = ", ".join(f"{r.name} ({r.type})" for r in rows)
    return f"variable {named}" if len(rows) == 1 else f"variables {named}"


class RecordedDisplay:
    """Stands in for a result that could not be stored as a value: it shows what the original showed."""
    def __init__(self, bundle: dict[str, Any]) -> None:
        self._bundle = bundle

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        return self._bundle["data"], self._bundle.get("metadata") or {}


def adopt(value: Any, ns: dict[str, Any]) -> Any:
    """Functions and classes rebuilt from the log read globals from the live namespace, like the originals."""
    if isinstance(value, types.FunctionType):
        _adopt_inner(value, ns, {}, 8)
    if _notebook_function(value):
        return _rebind(value, ns)
    if isinstance(value, type) and value.__module__ == "__main__":
        for attr, member in list(vars(value).items()):
            func = member.__func__ if isinstance(member, staticmethod | classmethod) else member
            if _notebook_function(func):
                rebound = _rebind(func, ns)
                setattr(value, attr, type(member)(rebound) if func is not member else rebound)
    return value


def _adopt_inner(func: types.FunctionType, ns: dict[str, Any], done: dict[int, types.FunctionType],
                 depth: int) -> None:
    """A decorator's wrapper holds the notebook function it wraps (in its closure and as `__wrapped__`): that
    one reads the live namespace too, and stays the one object both places hold."""
    if depth == 0:
        return

    def adopted(inner: types.FunctionType) -> types.FunctionType:
        if id(inner) not in done:
            done[id(inner)] = _rebind(inner, ns)
            _adopt_inner(inner, ns, done, depth - 1)
        return done[id(inner)]

    for cell in func.__closure__ or ():
        try:
            content = cell.cell_contents
        except ValueError:  # not assigned yet
            continue
        if _notebook_function(content) and content is not func:
            cell.cell_contents = adopted(content)
    wrapped = getattr(func, "__wrapped__", None)
    if _notebook_function(wrapped):
        func.__wrapped__ = adopted(wrapped)  # type: ignore[attr-defined]


def _notebook_function(value: object) -> TypeGuard[types.FunctionType]:
    # By its globals, not its __module__: functools.wraps copies "__main__" onto library wrappers (dataclasses'
    # recursive-repr guard) whose globals are their library's own.
    return isinstance(value, types.FunctionType) and value.__globals__.get("__name__") == "__main__"


def _rebind(func: types.FunctionType, ns: dict[str, Any]) -> types.FunctionType:
    new = types.FunctionType(func.__code__, ns, func.__name__, func.__defaults__, func.__closure__)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__ = func.__qualname__
    new.__doc__ = func.__doc__
    new.__annotations__ = func.__annotations__
    new.__dict__.update(func.__dict__)
    new.__module__ = func.__module__
    return new


def _can_update(current: Any, value: Any) -> bool:
    """An input the cell mutated is restored into the existing object, so names aliasing it see the change."""
    if current is None or type(current) is not type(value):
        return False
    if isinstance(current, list | bytearray | dict | set) or _is_pandas(current):
        return True
    np = sharing.numpy_if_imported()
    return (np is not None and type(current) is np.ndarray and current.shape == value.shape
            and current.dtype == value.dtype and bool(current.flags.writeable))


def _is_pandas(value: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and type(value) in (pd.DataFrame, pd.Series) and hasattr(value, "_update_inplace")


def _update(current: Any, value: Any) -> None:
    if isinstance(current, list | bytearray):
        current[:] = value
    elif isinstance(current, dict | set):
        current.clear()
        current.update(value)
    elif _is_pandas(current):
        # What pandas' own inplace=True does: the object takes the decoded one's data and axes (`df2 = df`
        # then `df["c"] = ...` in the next cell: df2 has column c after a replay too).
        current._update_inplace(value)
        current.flags.allows_duplicate_labels = value.flags.allows_duplicate_labels
        if isinstance(current, sys.modules["pandas"].Series):
            current.name = value.name
    else:
        current[...] = value



