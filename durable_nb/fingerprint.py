"""Deterministic content fingerprints of Python values: the cell key's view of the inputs a cell reads.

A value becomes a stream of type-tagged, self-delimiting records fed into one xxh3_128 state: scalars as their
bytes, containers as tag + length + items, arrays and DataFrame columns as their raw buffers (never a pickle).
Mutable containers and objects are remembered by visit index, so cycles terminate and aliasing stays visible.
Nothing depends on id(), hash() or set order, so fingerprints agree across processes, hash seeds and machines.
"""

from __future__ import annotations

import builtins
import copyreg
import dis
import functools
import itertools
import os
import site
import struct
import sys
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import xxhash

from durable_nb.errors import Unfingerprintable

if TYPE_CHECKING:
    from concurrent.futures import Future

# Bump when the encoding changes: old keys must miss rather than collide with new ones.
_FORMAT = b"durable_nb.fingerprint/2"
# Buffer bytes (everything put() receives) are hashed as a tree of leaves of this fixed size, the leaves of one
# put() in parallel: xxh3 releases the GIL, and one core streams ~15 GiB/s, well under memory bandwidth.
# A stream shorter than one leaf is plain xxh3_128, so small values pay nothing. The size is part of the format:
# never derived from the machine, so fingerprints agree whatever the number of cores.
_LEAF_BYTES = 16 << 20
_TREE = b"durable_nb.tree"
# Strided arrays and Arrow offsets are copied through one reused scratch buffer of this size: new memory costs
# ~0.8 s per GiB on first touch here, a hot 4 MiB buffer costs nothing.
_SCRATCH_BYTES = 4 << 20
# Leaves handed to the pool that put() does not wait for: 128 MiB, two columns' worth of a large frame.
_PENDING_LEAVES = 8
_FILE_CHUNK = 1 << 20
# Below this length, checking whether a sequence is homogeneous costs more than it saves.
_HOMOGENEOUS_MIN = 16
_FLUSH_EVERY = 4096

_TAG_N = struct.Struct("<cq")
_TAG_F = struct.Struct("<cd")
_TAG_C = struct.Struct("<cdd")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

Handler = Callable[["_Hasher", Any], None]


def _enc_int(value: int) -> bytes:
    if _INT64_MIN <= value <= _INT64_MAX:
        return _TAG_N.pack(b"i", value)
    raw = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    return _TAG_N.pack(b"I", len(raw)) + raw


def _enc_str(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return _TAG_N.pack(b"s", len(raw)) + raw


def _enc_bytes(value: bytes) -> bytes:
    return _TAG_N.pack(b"b", len(value)) + value


_SCALARS: dict[type, Callable[[Any], bytes]] = {
    type(None): lambda _: b"N",
    bool: lambda v: b"T" if v else b"F",
    int: _enc_int,
    float: lambda v: _TAG_F.pack(b"f", v),
    complex: lambda v: _TAG_C.pack(b"j", v.real, v.imag),
    str: _enc_str,
    bytes: _enc_bytes,
    type(Ellipsis): lambda _: b"E",
    type(NotImplemented): lambda _: b"X",
}

# Reasons for the types users most often hold in a namespace that cannot be fingerprinted.
_REASONS = {
    "generator": "its position is hidden state that cannot be read without advancing it",
    "coroutine": "its suspended frame is hidden state that cannot be read",
    "async_generator": "its position is hidden state that cannot be read without advancing it",
    "_thread.lock": "a lock is a live OS resource, not data",
    "_thread.RLock": "a lock is a live OS resource, not data",
    "socket": "an open socket is a live connection, not data",
}


def _type_name(t: type) -> str:
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _unfingerprintable(value: object, reason: str) -> Unfingerprintable:
    name = _type_name(type(value))
    why = _REASONS.get(name) or _REASONS.get(type(value).__name__) or reason
    return Unfingerprintable(
        f"cannot fingerprint a value of type {name}: {why}. The cell will run instead of replaying; "
        "declare what it depends on with --deps-file, or keep such objects out of the cell's inputs."
    )


class _Memo:
    """Visit indexes of the mutable objects seen in this call. A child memo (one per set element) sees its
    parent's entries but numbers its own from where the parent stood, so the order sets iterate in never
    leaks into the numbering."""

    __slots__ = ("_base", "_local", "_parent")

    def __init__(self, parent: _Memo | None = None) -> None:
        self._parent = parent
        self._base = parent.size() if parent is not None else 0
        self._local: dict[int, int] = {}

    def size(self) -> int:
        return self._base + len(self._local)

    def get(self, key: int) -> int | None:
        memo: _Memo | None = self
        while memo is not None:
            index = memo._local.get(key)
            if index is not None:
                return index
            memo = memo._parent
        return None

    def add(self, key: int) -> None:
        self._local[key] = self.size()


class _Call:
    """State shared by every hasher of one fingerprint() call."""

    __slots__ = ("_scratch", "keep")

    def __init__(self) -> None:
        # Objects made during the call (reduce tuples...) stay alive so their id()s cannot be reused.
        self.keep: list[object] = []
        self._scratch: Any = None

    def scratch(self) -> Any:
        if self._scratch is None:
            import numpy as np

            self._scratch = np.empty(_SCRATCH_BYTES, dtype=np.uint8)
        return self._scratch


_pool: Any = None


def _leaf_pool() -> Any:
    """One small pool for every fingerprint in the process, made on first use of a large buffer."""
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="durable_nb-hash")
    return _pool


def _forget_pool() -> None:
    # A forked child inherits the pool object but not its threads: work submitted to it would never run.
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


def on_pool(func: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
    """`map(func, items)`, on the hashing pool when there is more than one item: all are submitted at once."""
    return _leaf_pool().map(func, items) if len(items) > 1 else map(func, items)


def _leaf(data: memoryview) -> bytes:
    return xxhash.xxh3_128(data).digest()


class _Hasher:
    """An xxh3_128 stream; past _LEAF_BYTES of put() bytes, a tree: the digest of every leaf's digest. Leaf
    boundaries fall every _LEAF_BYTES bytes of put() data wherever put() calls begin and end, so a buffer put
    whole or in pieces (a strided copy block by block, an Arrow column chunk by chunk) hashes the same."""

    __slots__ = ("_h", "_leaves", "_pending", "_room", "call", "memo")

    def __init__(self, call: _Call, memo: _Memo) -> None:
        self._h = xxhash.xxh3_128()
        self._room = _LEAF_BYTES
        self._leaves: list[bytes | Future[bytes]] = []
        self._pending: deque[Future[bytes]] = deque()
        self.call = call
        self.memo = memo

    def put(self, data: Any) -> None:
        n = len(data) if type(data) is bytes else memoryview(data).nbytes
        if n < self._room:
            self._room -= n
            self._h.update(data)
            return
        view = memoryview(data).cast("B")
        head = self._room
        whole = (n - head) // _LEAF_BYTES
        tail = head + whole * _LEAF_BYTES
        # The pool hashes the whole leaves while this thread finishes the current leaf, starts the next and goes
        # on to the next buffers (a frame's next column): waiting here for each buffer's leaves left the pool
        # idle between columns. A put() with whole leaves is at least one leaf long, so the reused scratch block
        # (at most _SCRATCH_BYTES) never reaches the pool; any other buffer stays alive through its leaves' views.
        if whole:
            self._settle(_PENDING_LEAVES - whole)
            pool = _leaf_pool()
            for i in range(head, tail, _LEAF_BYTES):
                self._pending.append(pool.submit(_leaf, view[i : i + _LEAF_BYTES]))
        self._h.update(view[:head])
        self._leaves.append(self._h.digest())
        self._leaves.extend(itertools.islice(self._pending, len(self._pending) - whole, None))
        self._h = xxhash.xxh3_128(view[tail:])
        self._room = _LEAF_BYTES - (n - tail)

    def _settle(self, limit: int) -> None:
        """Wait until at most `limit` leaves are still being hashed: a fresh copy (a cast column) is freed only
        once its leaves are done, so this bounds the memory held beyond the value's own."""
        while self._pending and len(self._pending) > max(limit, 0):
            self._pending.popleft().result()

    def _digest(self) -> bytes:
        if not self._leaves:
            return self._h.digest()
        self._settle(0)
        tree = xxhash.xxh3_128(_TREE)
        tree.update(b"".join(leaf if isinstance(leaf, bytes) else leaf.result() for leaf in self._leaves))
        tree.update(self._h.digest())
        return tree.digest()

    def tag(self, tag: bytes, n: int) -> None:
        self._h.update(_TAG_N.pack(tag, n))

    def visit(self, value: object) -> None:
        enc = _SCALARS.get(type(value))
        if enc is not None:
            self._h.update(enc(value))
        else:
            _handler(type(value))(self, value)

    def visit_in(self, value: object, where: str) -> None:
        """visit() that says, if the value cannot be fingerprinted, where it was reached from."""
        try:
            self.visit(value)
        except Unfingerprintable as e:
            raise Unfingerprintable(f"{e} (reached through {where})") from e

    def seen(self, value: object) -> bool:
        """Record `value` as visited; if it already was, write a back-reference instead and return True."""
        index = self.memo.get(id(value))
        if index is not None:
            self.tag(b"@", index)
            return True
        self.memo.add(id(value))
        self.call.keep.append(value)
        return False

    def sub_digest(self, value: object) -> bytes:
        sub = _Hasher(self.call, _Memo(self.memo))
        sub.visit(value)
        return sub._digest()

    def digest_hex(self) -> str:
        return self._digest().hex()

    def items(self, values: Iterable[object]) -> None:
        """Items one after another; runs of scalars are joined into one update."""
        parts: list[bytes] = []
        get = _SCALARS.get
        for value in values:
            enc = get(type(value))
            if enc is not None:
                parts.append(enc(value))
                if len(parts) >= _FLUSH_EVERY:
                    self._h.update(b"".join(parts))
                    parts.clear()
                continue
            if parts:
                self._h.update(b"".join(parts))
                parts.clear()
            _handler(type(value))(self, value)
        if parts:
            self._h.update(b"".join(parts))

    def sequence(self, values: Sequence[object]) -> None:
        if len(values) >= _HOMOGENEOUS_MIN:
            kinds = set(map(type, values))
            if len(kinds) == 1 and self._homogeneous(kinds.pop(), values):
                return
        self._h.update(b"g")
        self.items(values)

    def _homogeneous(self, kind: type, values: Sequence[Any]) -> bool:
        from array import array  # deferred for start-up speed: a C module a script's first call seldom needs

        if kind is float:
            self._h.update(b"hf")
            self._h.update(array("d", values))
            return True
        if kind is int:
            try:
                packed = array("q", values)
            except OverflowError:
                return False
            self._h.update(b"hi")
            self._h.update(packed)
            return True
        if kind is str:
            encoded = [v.encode("utf-8", "surrogatepass") for v in values]
            self._h.update(b"hs")
            self._h.update(array("q", map(len, encoded)))
            self._h.update(b"".join(encoded))
            return True
        return False


def fingerprint(value: object) -> str:
    """32 lowercase hex chars (xxh3_128) identifying `value`'s content; raises Unfingerprintable."""
    found = _content(value)
    restored = _RESTORED.get(id(value))
    if restored is not None and restored[0]() is value and restored[1] == found:
        return restored[2]
    return found


# A value a replay rebuilt from a pickle whose round trip is not exact (a library's __setstate__ that drops
# state, say) hashes unlike the value recorded. While it still hashes as it did when restored — unchanged
# since — it stands for the recorded value: id → (the value, its hash when restored, the recorded hash).
_RESTORED: dict[int, tuple[Callable[[], object], str, str]] = {}


def remember_restored(value: object, recorded: str) -> None:
    """`value` was rebuilt from a value whose fingerprint was `recorded` (see `by_reduction`)."""
    now = _content(value)
    if now == recorded:
        return
    try:
        ref: Callable[[], object] = weakref.ref(value, lambda _: _RESTORED.pop(key, None))
    except TypeError:  # not weakly referable: held while the entry lives
        ref = functools.partial(lambda v: v, value)
    key = id(value)
    _RESTORED[key] = (ref, now, recorded)


def by_reduction(value: object) -> bool:
    """Whether `value` is hashed through its pickle reduction: the kind whose round trip may not be exact."""
    return _SCALARS.get(type(value)) is None and _handler(type(value)) is _object


def _content(value: object) -> str:
    hasher = _Hasher(_Call(), _Memo())
    hasher.put(_FORMAT)
    try:
        hasher.visit(value)
    except RecursionError:
        raise Unfingerprintable(
            f"cannot fingerprint a value of type {_type_name(type(value))}: it is nested too deeply "
            f"(deeper than the recursion limit, {sys.getrecursionlimit()}). The cell will run instead of "
            "replaying."
        ) from None
    return hasher.digest_hex()


def fingerprint_file(path: str | os.PathLike[str]) -> str:
    """xxh3_128 (hex) of a file's bytes, read in chunks into one reused buffer."""
    h = xxhash.xxh3_128()
    buf = bytearray(_FILE_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def referenced_globals(func: types.FunctionType) -> set[str]:
    """Global names `func`'s code reads, including nested functions, lambdas, comprehensions, class bodies."""
    return set(_code_globals(func.__code__))


@functools.lru_cache(maxsize=4096)
def _code_globals(code: types.CodeType) -> frozenset[str]:
    names = {ins.argval for ins in dis.get_instructions(code) if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_globals(const)
    return frozenset(names)


# ---------------------------------------------------------------------------------------------- dispatch

_HANDLERS: weakref.WeakKeyDictionary[type, Handler] = weakref.WeakKeyDictionary()


def _handler(t: type) -> Handler:
    handler = _HANDLERS.get(t)
    if handler is None:
        handler = _resolve(t)
        _HANDLERS[t] = handler
    return handler


def _resolve(t: type) -> Handler:
    exact = _EXACT.get(t)
    if exact is not None:
        return exact
    if issubclass(t, type):
        return _class
    if issubclass(t, types.ModuleType):
        return _module
    # Only a value whose type comes from numpy/pandas/pyarrow imports them (they are already imported then).
    top = t.__module__.partition(".")[0]
    special = {"numpy": _numpy_handler, "pandas": _pandas_handler, "pyarrow": _arrow_handler,
               "matplotlib": _matplotlib_handler, **dict.fromkeys(_LIBRARIES, _library_handler)}.get(top)
    found = special(t) if special is not None else None
    return found if found is not None else _object


# Libraries whose values fingerprint_libs hashes; it is imported only when one of their values is first seen.
_LIBRARIES = ("polars", "torch", "xarray", "scipy")


def _library_handler(t: type) -> Handler | None:
    from .fingerprint_libs import handler  # deferred for start-up speed: only once such a value is seen

    return handler(t)


# ---------------------------------------------------------------------------------------------- containers


def _list(h: _Hasher, value: list[object]) -> None:
    if h.seen(value):
        return
    h.tag(b"L", len(value))
    h.sequence(value)


def _tuple(h: _Hasher, value: tuple[object, ...]) -> None:
    # Immutable: no memo entry, so equal tuples hash equal however they are shared.
    h.tag(b"U", len(value))
    h.sequence(value)


def _dict(h: _Hasher, value: dict[object, object]) -> None:
    if h.seen(value):
        return
    h.tag(b"D", len(value))
    # Keys then values, each as one sequence, so big dicts of scalars take the homogeneous fast paths.
    h.sequence(list(value))
    h.sequence(list(value.values()))


def _mappingproxy(h: _Hasher, value: types.MappingProxyType[object, object]) -> None:
    h.tag(b"d", len(value))
    h.items(itertools.chain.from_iterable(value.items()))


def _set(h: _Hasher, value: set[object] | frozenset[object]) -> None:
    if isinstance(value, set) and h.seen(value):
        return
    h.tag(b"S" if isinstance(value, set) else b"Z", len(value))
    kinds = set(map(type, value))
    if len(kinds) == 1 and kinds.pop() in (str, int, bytes):
        # These sort into one total order of their own: no need to hash each element apart.
        h.put(b"o")
        h.items(sorted(value))  # type: ignore[type-var]
        return
    h.put(b"d")
    h.put(b"".join(sorted(h.sub_digest(v) for v in value)))


def _bytearray(h: _Hasher, value: bytearray) -> None:
    if h.seen(value):
        return
    h.tag(b"y", len(value))
    h.put(value)


def _memoryview(h: _Hasher, value: memoryview) -> None:
    h.visit((value.format, value.shape))
    h.tag(b"v", value.nbytes)
    h.put(value.tobytes() if not value.c_contiguous else value.cast("B"))


# Immutable values of the standard library: which object holds one must not matter, as for tuples (a replay
# that decodes two equal datetimes as two objects, where the first run shared one, keeps the same fingerprint).
_VALUE_TYPES = frozenset({("datetime", "date"), ("datetime", "time"), ("datetime", "timedelta"),
                          ("datetime", "tzinfo"), ("decimal", "Decimal"), ("fractions", "Fraction"),
                          ("uuid", "UUID"), ("pathlib", "PurePath")})


_VALUE_TYPE_SEEN: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def _value_type(t: type) -> bool:
    known = _VALUE_TYPE_SEEN.get(t)
    if known is None:
        known = _VALUE_TYPE_SEEN[t] = any((b.__module__, b.__qualname__) in _VALUE_TYPES for b in t.__mro__)
    return known


def _object(h: _Hasher, value: object) -> None:
    """Anything else: its pickle reduction (callable, args, state, items) through the same recursion."""
    if not _value_type(type(value)) and h.seen(value):
        return
    t = type(value)
    reducer = copyreg.dispatch_table.get(t)
    try:
        reduced = reducer(value) if reducer is not None else value.__reduce_ex__(5)
    except Exception as e:
        # Pickle itself calls exactly this, so where it fails a pickle-bytes fallback would fail too.
        raise _unfingerprintable(value, f"it cannot be reduced to its state ({e})") from e
    h.call.keep.append(reduced)
    if isinstance(reduced, str):  # a global singleton, named
        h.put(b"r")
        h.visit((getattr(value, "__module__", None) or t.__module__, reduced))
        return
    func, args, state, listitems, dictitems, setter = (tuple(reduced) + (None,) * 6)[:6]
    h.tag(b"O", len(reduced))
    where = f"the state of a {_type_name(t)}"
    h.visit_in(func, where)
    h.visit_in(args, where)
    h.visit_in(state, where)
    h.visit_in(None if listitems is None else list(listitems), where)
    h.visit_in(None if dictitems is None else list(dictitems), where)
    h.visit_in(setter, where)


# ---------------------------------------------------------------------------------------------- code


def _install_dirs() -> tuple[str, ...]:
    import sysconfig  # deferred for start-up speed: asked only once a global of an imported module is met

    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs.update(site.getsitepackages())
    dirs.add(site.getusersitepackages())
    return tuple(os.path.realpath(d) + os.sep for d in dirs)


@functools.lru_cache(maxsize=4096)
def _by_reference(module: str | None) -> bool:
    """Installed code (stdlib, site-packages, built-in) is named, not read: its version stands for it.
    `__main__` (the notebook) and local, editable or unknown modules are fingerprinted by content."""
    if not module or module == "__main__":
        return False
    mod = sys.modules.get(module)
    if mod is None:
        return False
    file = getattr(mod, "__file__", None)
    if file is None:
        return True
    return bool(os.path.realpath(file).startswith(_INSTALL_DIRS()))


_INSTALL_DIRS = functools.cache(_install_dirs)


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    import importlib.metadata  # deferred for start-up speed: needed only for a module without __version__

    return importlib.metadata.packages_distributions()


@functools.lru_cache(maxsize=1024)
def _version(module: str) -> str:
    top = module.partition(".")[0]
    version = getattr(sys.modules.get(top), "__version__", None)
    if isinstance(version, str):
        return version
    if top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "builtins":
        return f"python-{sys.version.split()[0]}"
    import importlib.metadata  # deferred for start-up speed (see _distributions)

    for dist in _distributions().get(top, ()):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


def _reference(h: _Hasher, tag: bytes, module: str, qualname: str) -> None:
    h.put(tag)
    h.visit((module, qualname, _version(module)))


def _module(h: _Hasher, value: types.ModuleType) -> None:
    _reference(h, b"M", value.__name__, "")


def _code(h: _Hasher, code: types.CodeType) -> None:
    # Line numbers, positions and the file name stay out: a comment-only edit leaves the code object's
    # behaviour, and so the fingerprint, unchanged.
    h.put(b"K")
    h.visit(
        (
            getattr(code, "co_qualname", code.co_name),
            code.co_code,
            getattr(code, "co_exceptiontable", b""),
            code.co_argcount,
            code.co_posonlyargcount,
            code.co_kwonlyargcount,
            code.co_flags,
            code.co_names,
            code.co_varnames,
            code.co_freevars,
            code.co_cellvars,
        )
    )
    h.visit(code.co_consts)


def _function(h: _Hasher, func: types.FunctionType) -> None:
    if h.seen(func):  # also ends mutual recursion through globals
        return
    if _by_reference(func.__module__):
        _reference(h, b"f", func.__module__, func.__qualname__)
        return
    where = f"function {func.__module__}.{func.__qualname__}"
    h.put(b"P")
    h.visit(func.__code__)
    h.visit_in(func.__defaults__, f"the defaults of {where}")
    h.visit_in(func.__kwdefaults__, f"the defaults of {where}")
    cells = func.__closure__ or ()
    h.tag(b"c", len(cells))
    for name, cell in zip(func.__code__.co_freevars, cells, strict=True):
        try:
            content = cell.cell_contents
        except ValueError:  # a closure variable not assigned yet
            h.put(b"-")
            continue
        h.visit_in(content, f"closure variable {name!r} of {where}")
    names = sorted(_code_globals(func.__code__))
    namespace, builtin_ns = func.__globals__, vars(builtins)
    h.tag(b"G", len(names))
    for name in names:
        h.visit(name)
        if name in namespace:
            h.put(b"g")
            h.visit_in(namespace[name], f"global {name!r} of {where}")
        elif name in builtin_ns:
            h.put(b"b")
            h.visit(builtin_ns[name])
        else:
            h.put(b"-")
    if func.__dict__:  # function attributes, functools.wraps' __wrapped__
        h.visit_in(func.__dict__, f"the attributes of {where}")


def _method(h: _Hasher, method: types.MethodType) -> None:
    h.put(b"m")
    h.visit(method.__func__)
    h.visit_in(method.__self__, f"the object bound to method {method.__qualname__}")


def _builtin(h: _Hasher, func: types.BuiltinFunctionType) -> None:
    owner = func.__self__
    if owner is None or isinstance(owner, types.ModuleType):
        module = func.__module__ or getattr(owner, "__name__", "builtins")
        _reference(h, b"B", module, func.__qualname__)
        return
    h.put(b"n")  # a method bound to an object, e.g. [].append or dict.fromkeys
    h.visit(func.__name__)
    h.visit_in(owner, f"the object bound to {func.__qualname__}")


def _descriptor(h: _Hasher, value: Any) -> None:
    owner = value.__self__ if isinstance(value, types.MethodWrapperType) else value.__objclass__
    h.put(b"w")
    h.visit(value.__name__)
    h.visit(owner)


def _wrapped_function(h: _Hasher, value: staticmethod[Any, Any] | classmethod[Any, Any, Any]) -> None:
    h.put(b"t" if isinstance(value, staticmethod) else b"k")
    h.visit(value.__func__)


def _property(h: _Hasher, value: property) -> None:
    h.put(b"p")
    h.visit((value.fget, value.fset, value.fdel, value.__doc__))


def _cached_property(h: _Hasher, value: functools.cached_property[Any]) -> None:
    h.put(b"q")
    h.visit((value.func, value.attrname))


# Per-class bookkeeping, not behaviour (and _abc_impl cannot be reduced).
# Not part of what a class does: caches that pickling (__slotnames__) or abc add to a class as it is used.
_SKIP_CLASS_ATTRS = frozenset({"__dict__", "__weakref__", "_abc_impl", "__module__", "__slotnames__"})


def _class(h: _Hasher, cls: type) -> None:
    if h.seen(cls):
        return
    if _by_reference(cls.__module__):
        _reference(h, b"C", cls.__module__, cls.__qualname__)
        return
    where = f"class {cls.__module__}.{cls.__qualname__}"
    h.put(b"Q")
    h.visit((cls.__qualname__, cls.__bases__))
    h.visit(type(cls))
    # By name: a class rebuilt from a pickle lists its attributes in another order (`__doc__` moves).
    attrs = sorted(((k, v) for k, v in vars(cls).items() if k not in _SKIP_CLASS_ATTRS), key=lambda kv: kv[0])
    h.tag(b"a", len(attrs))
    for name, attr in attrs:
        h.visit(name)
        h.visit_in(attr, f"attribute {name!r} of {where}")


_EXACT: dict[type, Handler] = {
    list: _list,
    tuple: _tuple,
    dict: _dict,
    set: _set,
    frozenset: _set,
    bytearray: _bytearray,
    memoryview: _memoryview,
    types.MappingProxyType: _mappingproxy,
    types.FunctionType: _function,
    types.MethodType: _method,
    types.BuiltinFunctionType: _builtin,
    types.CodeType: _code,
    types.WrapperDescriptorType: _descriptor,
    types.MethodDescriptorType: _descriptor,
    types.ClassMethodDescriptorType: _descriptor,
    types.GetSetDescriptorType: _descriptor,
    types.MemberDescriptorType: _descriptor,
    types.MethodWrapperType: _descriptor,
    staticmethod: _wrapped_function,
    classmethod: _wrapped_function,
    property: _property,
    functools.cached_property: _cached_property,
}


def _matplotlib_handler(t: type) -> Handler | None:
    from . import figures  # deferred for start-up speed: only once a matplotlib object is seen

    return figures.handler(t)


# ---------------------------------------------------------------------------------------------- numpy


def _numpy_handler(t: type) -> Handler | None:
    import numpy as np

    if t is np.ndarray or t is np.memmap:
        return _ndarray
    if t is np.ma.MaskedArray:
        return _masked_array
    # Other ndarray subclasses carry more than their buffer: they go through _object.
    if issubclass(t, np.generic):
        return _numpy_scalar
    return None


def _dtype_key(dtype: Any) -> str:
    # dtype.str ('<f8', '<M8[ns]', '|V16') loses field names and sub-array shapes; descr keeps them.
    return dtype.str if dtype.fields is None and dtype.subdtype is None else str(dtype.descr)


def _numpy_scalar(h: _Hasher, value: Any) -> None:
    h.put(b"x")
    h.visit(_dtype_key(value.dtype))
    if value.dtype.hasobject:
        h.visit(value.item())
    else:
        h.put(value.tobytes())


def _ndarray(h: _Hasher, arr: Any) -> None:
    if h.seen(arr):
        return
    h.put(b"A")
    h.visit((_dtype_key(arr.dtype), arr.shape))
    _array_content(h, arr)


def _masked_array(h: _Hasher, arr: Any) -> None:
    """Mask, unmasked data and fill value: its pickle also carries bookkeeping a round trip changes."""
    import numpy as np

    if h.seen(arr):
        return
    h.put(b"Am")
    h.visit((_dtype_key(arr.dtype), arr.shape))
    mask = np.ma.getmaskarray(arr)
    _raw(h, mask)
    data = np.ma.getdata(arr)
    if mask.any() and not arr.dtype.hasobject:
        data = np.where(mask, np.zeros((), dtype=data.dtype), data)  # what hides under the mask is arbitrary
    _array_content(h, data)
    h.visit_in(arr.fill_value, "the fill value of a masked array")


def _array_content(h: _Hasher, arr: Any) -> None:
    # Object arrays hold references, StringDType arrays hold pointers: only their elements mean anything.
    if arr.dtype.hasobject or arr.dtype.kind == "T":
        h.sequence(arr.reshape(-1).tolist())
    else:
        _raw(h, arr)


def _raw(h: _Hasher, arr: Any) -> None:
    """The array's bytes in C order: in place when C-contiguous, else block by block through the scratch
    buffer, so a strided view hashes like its contiguous copy without a whole-size copy."""
    if arr.flags.c_contiguous:
        h.put(arr.reshape(-1).view("u1"))  # a byte view: numpy exports no buffer for datetime64
        return
    rows = arr.shape[0]
    row_bytes = arr.nbytes // rows if rows else 0
    if row_bytes == 0:
        return
    if row_bytes > _SCRATCH_BYTES:
        for i in range(rows):
            _raw(h, arr[i])
        return
    import numpy as np

    scratch = h.call.scratch()
    step = _SCRATCH_BYTES // row_bytes
    for start in range(0, rows, step):
        block = arr[start : start + step]
        out = scratch[: block.nbytes]
        np.copyto(out.view(arr.dtype).reshape(block.shape), block)
        h.put(out)


# ---------------------------------------------------------------------------------------------- pandas


def _pandas_handler(t: type) -> Handler | None:
    import pandas as pd

    if issubclass(t, pd.DataFrame):
        return _dataframe
    if issubclass(t, pd.Series):
        return _series
    if issubclass(t, pd.Index):
        return _index_value
    if issubclass(t, pd.api.extensions.ExtensionArray):
        return _extension_array_value
    typing = getattr(pd.api, "typing", None)
    if typing is not None and issubclass(t, (typing.DataFrameGroupBy, typing.SeriesGroupBy)):
        return _groupby
    return None


def _groupby(h: _Hasher, grouped: Any) -> None:
    """What it groups and how (`df.groupby("key")["col"]`): its first aggregation fills caches that a pickle
    round trip does not keep, so its whole state read as a different input after every use and every replay."""
    if h.seen(grouped):
        return
    h.put(b"pG")
    h.visit((_type_name(type(grouped)), grouped.obj, grouped.keys, grouped.level, grouped.as_index, grouped.sort,
             grouped.group_keys, grouped.observed, grouped.dropna, getattr(grouped, "_selection", None)))


def _dataframe(h: _Hasher, df: Any) -> None:
    if h.seen(df):
        return
    h.put(b"pF")
    # Column labels as plain values: the dtype pandas infers for a columns Index varies with how the frame
    # was built (constructor, concat, assignment) while the labels are what matter.
    h.visit((df.shape, df.columns.tolist(), df.columns.names))
    _index(h, df.index)
    for i in range(df.shape[1]):
        _values(h, df.iloc[:, i].array)
    h.visit(df.attrs)


def _series(h: _Hasher, series: Any) -> None:
    if h.seen(series):
        return
    h.put(b"pS")
    h.visit_in(series.name, "the name of a Series")
    _index(h, series.index)
    _values(h, series.array)
    h.visit(series.attrs)


def _index_value(h: _Hasher, index: Any) -> None:
    h.put(b"pI")
    _index(h, index)


def _extension_array_value(h: _Hasher, values: Any) -> None:
    if h.seen(values):
        return
    h.put(b"pE")
    _values(h, values)


def _index(h: _Hasher, index: Any) -> None:
    import pandas as pd

    h.visit_in(list(index.names), "the names of an Index")
    if isinstance(index, pd.RangeIndex):
        # Normalized like range equality: range(0, 0) == range(5, 5), range(3, 4, 2) == range(3, 4).
        n = len(index)
        h.tag(b"R", n)
        h.visit((index.start if n else 0, index.step if n > 1 else 1))
    elif isinstance(index, pd.MultiIndex):
        # Level values rather than levels + codes: unused or reordered levels do not change the content.
        h.tag(b"X", index.nlevels)
        for level in range(index.nlevels):
            _values(h, index.get_level_values(level).array)
    else:
        h.put(b"I")
        _values(h, index.array)


def _values(h: _Hasher, values: Any) -> None:
    """One column / index / array: its dtype, then its buffers where pandas has them."""
    import numpy as np
    import pandas as pd

    dtype = values.dtype
    if isinstance(dtype, np.dtype):
        h.visit(_dtype_key(dtype))
    elif isinstance(dtype, pd.CategoricalDtype):
        h.visit(("category", dtype.ordered))
    else:
        h.visit(repr(dtype))  # e.g. <StringDtype(na_value=nan)>, datetime64[ns, UTC], int64[pyarrow]
    h.tag(b"V", len(values))
    if isinstance(values, np.ndarray):
        _array_content(h, values)
    elif isinstance(values, pd.arrays.NumpyExtensionArray):
        _array_content(h, values.to_numpy())
    elif isinstance(values, pd.arrays.ArrowExtensionArray):  # includes pandas 3's default `str` dtype
        _chunked(h, values.__arrow_array__())
    elif isinstance(values, (pd.arrays.DatetimeArray, pd.arrays.TimedeltaArray, pd.arrays.PeriodArray)):
        _raw(h, values.asi8)
    elif isinstance(values, pd.Categorical):
        _raw(h, values.codes)
        _index(h, values.categories)
    elif isinstance(values, (pd.arrays.IntegerArray, pd.arrays.FloatingArray, pd.arrays.BooleanArray)):
        _masked(h, values)
    else:  # python-backed strings, intervals, sparse, third-party arrays: element by element
        h.sequence(list(values))


def _masked(h: _Hasher, values: Any) -> None:
    import numpy as np

    mask, data = values._mask, values._data
    if mask.any():
        # Whatever sits under a missing value is arbitrary; zero it so equal arrays hash equal.
        data = np.where(mask, np.zeros((), dtype=data.dtype), data)
    _raw(h, mask)
    _raw(h, data)


# ---------------------------------------------------------------------------------------------- pyarrow


def _arrow_handler(t: type) -> Handler | None:
    import pyarrow as pa

    if issubclass(t, (pa.Table, pa.RecordBatch)):
        return _arrow_table
    if issubclass(t, pa.ChunkedArray):
        return _chunked
    if issubclass(t, pa.Array):
        return lambda h, arr: _chunked(h, pa.chunked_array([arr]))
    return None


def _arrow_table(h: _Hasher, table: Any) -> None:
    import pyarrow as pa

    h.put(b"aT")
    h.visit(table.schema.names)
    for column in table.columns:
        _chunked(h, column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column]))


def _chunked(h: _Hasher, chunked: Any) -> None:
    """An Arrow column as its logical content: independent of how it is chunked or sliced."""
    import pyarrow as pa

    typ = chunked.type
    h.put(b"aC")
    h.visit((str(typ), len(chunked), chunked.null_count))
    if chunked.null_count:
        _null_positions(h, chunked)
    if pa.types.is_null(typ):
        return
    if pa.types.is_string(typ) or pa.types.is_binary(typ):
        _var_width(h, chunked, "<i4")
    elif pa.types.is_large_string(typ) or pa.types.is_large_binary(typ):
        _var_width(h, chunked, "<i8")
    elif isinstance(typ, pa.FixedSizeBinaryType) or (
        pa.types.is_primitive(typ) and not pa.types.is_boolean(typ)
    ):
        width = typ.byte_width if isinstance(typ, pa.FixedSizeBinaryType) else typ.bit_width // 8
        for chunk in chunked.chunks:
            if len(chunk):
                h.put(chunk.buffers()[1][chunk.offset * width : (chunk.offset + len(chunk)) * width])
    elif pa.types.is_boolean(typ):
        for chunk in chunked.chunks:
            h.put(chunk.fill_null(False).to_numpy(zero_copy_only=False).view("u1"))  # nulls: positions above
    else:  # nested and dictionary types: element by element
        h.sequence(chunked.to_pylist())


def _null_positions(h: _Hasher, chunked: Any) -> None:
    import numpy as np

    start = 0
    for chunk in chunked.chunks:
        if chunk.null_count:
            h.put(np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False)).astype("<i8") + start)
        start += len(chunk)


def _var_width(h: _Hasher, chunked: Any, offset_dtype: str) -> None:
    """Strings / binaries: all value lengths, then all value bytes. Offsets depend on where a chunk starts,
    lengths do not; they are computed block by block through the scratch buffer."""
    import numpy as np

    scratch = h.call.scratch().view(offset_dtype)
    itemsize = scratch.itemsize
    spans = []
    for chunk in chunked.chunks:
        n = len(chunk)
        if not n:
            continue
        _, offsets_buf, data = chunk.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=offset_dtype, count=n + 1, offset=chunk.offset * itemsize)
        for i in range(0, n, len(scratch)):
            j = min(i + len(scratch), n)
            np.subtract(offsets[i + 1 : j + 1], offsets[i:j], out=scratch[: j - i])
            h.put(scratch[: j - i])
        spans.append((data, int(offsets[0]), int(offsets[-1])))
    for data, first, last in spans:
        if data is not None and last > first:
            h.put(data[first:last])
