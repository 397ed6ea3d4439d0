"""Plain Python data beyond JSON, without pickle: a tagged tree whose leaves go through the other safe codecs.

A value becomes a JSON document in which every container or non-JSON scalar is a list `[tag, ...]`: tuples,
sets, frozensets, dicts with any keys, OrderedDicts (with their attributes, e.g. a state_dict's `_metadata`),
defaultdicts of a builtin factory, Counters, deques, slices, Ellipsis, bytes, bytearrays, complex numbers,
ranges, datetime / date / time / timedelta (fold and time zones: fixed offsets and zoneinfo), Decimal, Fraction,
UUID, paths, Enum members, namedtuples, dataclasses of plain data, numpy dtypes, object ndarrays and pandas'
scalars (Timestamp, Timedelta, Period, NaT, NA). A leaf that another safe codec takes (an ndarray, a DataFrame,
a tensor...) is stored by that codec, its blobs beside the document; a list, dict, set
or leaf seen twice is a back-reference, so sharing survives (a cycle goes to pickle).

Decoding runs no code from the log. Classes (Enum, namedtuple, dataclass) are named by module and qualname and
looked up, never unpickled, in a module already imported (or one the cell imports: see reference.py), a
dataclass is rebuilt field by field without calling `__init__`, an Enum member is looked up by name, a
namedtuple built by `tuple.__new__`. A class defined in the notebook (`__main__`) does not exist when a fresh
kernel decodes the cell that defines it, so such values are not taken here: they are pickled, class by value.
"""

from __future__ import annotations

import binascii
import datetime as dt
import enum
import importlib
import json
import pathlib
import sys
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from ..errors import DecodeError
from . import LEAF_CODECS, decode_value
from .reference import loaded_module

if TYPE_CHECKING:
    from .streams import Sink, Source

INLINE_LIMIT = 64 * 1024
BYTES_INLINE = 4096  # longer bytes are a blob of their own, not base64 in the document
_JSON_SCALARS = (type(None), bool, int, float, str)
_PATHS = {c.__name__: c for c in (pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.PosixPath,
                                  pathlib.WindowsPath)}
_FACTORIES = {f.__name__: f for f in (list, dict, set, frozenset, tuple, int, float, str, bytes, bytearray, bool)}
class TaggedCodec:
    name = "tagged"
    version = 3  # 2: numpy dtypes; 3: Counter, deque, slice, Ellipsis, pandas' scalars
    safe = True

    def accepts(self, value: Any) -> bool:
        t = type(value)
        return (t in _SIMPLE or _by_name(t) is not None or isinstance(value, (enum.Enum, tuple))
                or _is_dataclass(t) or _object_array(value) or _numpy_dtype(value))

    def encode(self, value: Any, sink: Sink) -> dict[str, Any]:
        return encode_tree(value, sink)

    def decode(self, meta: dict[str, Any], sources: Sequence[Source]) -> Any:
        return decode_tree(meta, sources)


def encode_tree(value: Any, sink: Sink) -> dict[str, Any]:
    """Meta for `value` as a tagged document (inline, or in the first blob) plus its leaves' blobs. Raises
    ValueError (or a leaf codec's error) for what it cannot represent exactly."""
    doc_blob = len(sink.blob_ids)
    encoder = _Encoder(sink)
    text = json.dumps(encoder.node(value), ensure_ascii=True, allow_nan=True, check_circular=False,
                      separators=(",", ":"))
    if len(text) <= INLINE_LIMIT:
        return {"inline": text, "inline_size": len(text)}
    # The document goes after the leaves' blobs; its index is recorded so decoding finds it first.
    sink.put(text.encode("ascii"))
    return {"doc": len(sink.blob_ids) - 1 - doc_blob}


def decode_tree(meta: dict[str, Any], sources: Sequence[Source]) -> Any:
    text = meta["inline"] if "inline" in meta else sources[meta["doc"]].read().decode("ascii")
    return _Decoder(sources).node(json.loads(text))


def _numpy_dtype(value: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.dtype)


def _dtype_name(dtype: Any) -> str:
    """The string numpy rebuilds `dtype` from (byte order, unit and width included); structured dtypes and
    dtypes with metadata have none and go on to pickle."""
    import numpy as np

    if dtype.fields is not None or dtype.metadata or np.dtype(dtype.str) != dtype:
        raise ValueError(f"numpy dtype {dtype} is not rebuilt exactly from its name")
    return str(dtype.str)


def _object_array(value: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and type(value) is np.ndarray and value.dtype == object


# ---------------------------------------------------------------------------------------------- encoding


class _Encoder:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.base = len(sink.blob_ids)
        self.refs: dict[int, int] = {}
        self.open: set[int] = set()  # containers being encoded: meeting one again is a cycle
        self.keep: list[Any] = []

    def node(self, v: Any) -> Any:
        t = type(v)
        if t in _JSON_SCALARS:
            return v
        ref = self.refs.get(id(v))
        if ref is not None:
            if id(v) in self.open:
                raise ValueError("a container holds itself (a cycle)")
            return ["@", ref]
        simple = _SIMPLE.get(t) or _by_name(t)
        if simple is not None:
            return simple(self, v)
        if isinstance(v, enum.Enum):
            return ["e", *_class_name(t), _enum_name(v)]
        if t is tuple:
            return ["t", *map(self.node, v)]
        if isinstance(v, tuple) and _is_namedtuple(v):
            return ["nt", *_class_name(t), *map(self.node, v)]
        if _is_dataclass(t):
            return self._dataclass(v)
        if _numpy_dtype(v):  # e.g. the encoding of every variable xarray opens from a file
            return ["nd", _dtype_name(v)]
        return self._shared(v, self._leaf)

    def _shared(self, v: Any, encode: Callable[[Any], list[Any]]) -> list[Any]:
        """A mutable value (or a leaf): numbered, so that a second occurrence becomes a back-reference."""
        self.refs[id(v)] = len(self.refs)
        self.keep.append(v)
        self.open.add(id(v))
        try:
            return encode(v)
        finally:
            self.open.discard(id(v))

    def list_(self, v: list[Any]) -> list[Any]:
        return self._shared(v, lambda v: ["l", *map(self.node, v)])

    def dict_(self, v: dict[Any, Any]) -> list[Any]:
        return self._shared(v, lambda v: ["d", *self._items(v)])

    def ordered(self, v: OrderedDict[Any, Any]) -> list[Any]:
        attrs = vars(v) if hasattr(v, "__dict__") else {}
        return self._shared(v, lambda v: ["od", self.node(dict(attrs)) if attrs else None, *self._items(v)])

    def default(self, v: defaultdict[Any, Any]) -> list[Any]:
        factory = v.default_factory
        if factory is not None and _FACTORIES.get(getattr(factory, "__name__", "")) is not factory:
            raise ValueError(f"defaultdict factory {factory!r} is not a builtin type")
        name = None if factory is None else factory.__name__
        return self._shared(v, lambda v: ["dd", name, *self._items(v)])

    def set_(self, v: set[Any]) -> list[Any]:
        return self._shared(v, lambda v: ["s", *map(self.node, v)])

    def counter(self, v: Counter[Any]) -> list[Any]:
        return self._shared(v, lambda v: ["ct", *self._items(v)])

    def deque_(self, v: deque[Any]) -> list[Any]:
        return self._shared(v, lambda v: ["dq", v.maxlen, *map(self.node, v)])

    def bytearray_(self, v: bytearray) -> list[Any]:
        return self._shared(v, lambda v: ["ba", *self._bytes(v)])

    def _items(self, v: dict[Any, Any]) -> list[Any]:
        out = []
        for key, item in v.items():
            out.append(self.node(key))
            out.append(self.node(item))
        return out

    def _bytes(self, v: bytes | bytearray) -> list[Any]:
        if len(v) <= BYTES_INLINE:
            return [binascii.b2a_base64(v, newline=False).decode("ascii")]
        self.sink.put(v)
        return [None, len(self.sink.blob_ids) - 1 - self.base]

    def _dataclass(self, v: Any) -> list[Any]:
        t = type(v)
        _plain_state(t)
        names = [f.name for f in _fields(t)]
        extra = set(getattr(v, "__dict__", {})) - set(names)
        if extra:
            raise ValueError(f"dataclass {t.__qualname__} instance has attributes beyond its fields: {sorted(extra)}")
        module, qualname = _class_name(t)
        # A field with init=False and a class default may never be set on the instance: it stays unset, so the
        # rebuilt instance has the same __dict__ (and fingerprint) as the recorded one.
        own = getattr(v, "__dict__", None)
        unset = set() if own is None else {n for n in names if n not in own and not _is_slot(t, n)}
        return self._shared(v, lambda v: ["dc", module, qualname, names,
                                          *(_UNSET if n in unset else self.node(getattr(v, n)) for n in names)])

    def _leaf(self, v: Any) -> list[Any]:
        """A value another safe codec stores; its blobs follow in the sink."""
        if _object_array(v):
            return ["O", list(v.shape), *map(self.node, v.reshape(-1, order="C").tolist())]
        for codec in LEAF_CODECS:
            if codec.accepts(v):
                first = len(self.sink.blob_ids)
                meta = codec.encode(v, self.sink)
                return ["L", codec.name, codec.version, meta, first - self.base, len(self.sink.blob_ids) - first]
        raise ValueError(f"no safe codec stores a {type(v).__module__}.{type(v).__qualname__}")


def _zone(tz: dt.tzinfo | None) -> Any:
    if tz is None:
        return None
    if type(tz) is dt.timezone:
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        default = dt.timezone(offset).tzname(None)
        return ["tzf", offset.days, offset.seconds, offset.microseconds, None if name == default else name]
    if _is_class(type(tz), "zoneinfo", "ZoneInfo"):
        import zoneinfo  # imported already: `tz` is one of its objects

        key = cast("zoneinfo.ZoneInfo", tz).key
        if key is None or zoneinfo.ZoneInfo(key) is not tz:
            raise ValueError("a ZoneInfo not loaded by key (from_file / no_cache)")
        return ["tzz", key]
    raise ValueError(f"time zone type {type(tz).__module__}.{type(tz).__qualname__} is not stored exactly here")


def _datetime(_: _Encoder, v: dt.datetime) -> list[Any]:
    return ["dt", v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.fold, _zone(v.tzinfo)]


def _time(_: _Encoder, v: dt.time) -> list[Any]:
    return ["ti", v.hour, v.minute, v.second, v.microsecond, v.fold, _zone(v.tzinfo)]


_SIMPLE: dict[type, Callable[[_Encoder, Any], Any]] = {
    list: _Encoder.list_,
    dict: _Encoder.dict_,
    OrderedDict: _Encoder.ordered,
    defaultdict: _Encoder.default,
    set: _Encoder.set_,
    Counter: _Encoder.counter,
    deque: _Encoder.deque_,
    bytearray: _Encoder.bytearray_,
    slice: lambda e, v: ["sl", e.node(v.start), e.node(v.stop), e.node(v.step)],
    type(...): lambda e, v: ["..."],
    frozenset: lambda e, v: ["fs", *map(e.node, v)],
    bytes: lambda e, v: ["b", *e._bytes(v)],
    complex: lambda e, v: ["c", v.real, v.imag],
    range: lambda e, v: ["r", v.start, v.stop, v.step],
    dt.datetime: _datetime,
    dt.date: lambda e, v: ["da", v.year, v.month, v.day],
    dt.time: _time,
    dt.timedelta: lambda e, v: ["td", v.days, v.seconds, v.microseconds],
    **{cls: (lambda e, v: ["p", type(v).__name__, str(v)]) for cls in _PATHS.values()},
}

# Classes of standard modules a process may never import, looked up by name: a value of one exists only once its
# module is imported, and importing decimal, fractions, uuid and zoneinfo here cost a script's first call ~6 ms.
_BY_NAME: dict[tuple[str, str], Callable[[_Encoder, Any], Any]] = {
    ("decimal", "Decimal"): lambda e, v: ["de", str(v)],
    ("fractions", "Fraction"): lambda e, v: ["fr", v.numerator, v.denominator],
    ("uuid", "UUID"): lambda e, v: ["u", v.hex, v.is_safe.value],
    # pandas' scalars (`df["when"].max()`, `pd.Timestamp("2024-01-01")`): the raw count in their own unit.
    ("pandas", "Timestamp"): lambda e, v: ["pts", int(v.asm8.view("i8")), v.unit, _zone(v.tzinfo)],
    ("pandas", "Timedelta"): lambda e, v: ["ptd", int(v.asm8.view("i8")), v.unit],
    ("pandas", "Period"): lambda e, v: ["ppe", v.ordinal, v.freqstr],
    ("pandas.api.typing", "NaTType"): lambda e, v: ["nat"],
    ("pandas.api.typing", "NAType"): lambda e, v: ["pna"],
}


def _by_name(t: type) -> Callable[[_Encoder, Any], Any] | None:
    name = (t.__module__, t.__qualname__)
    return _BY_NAME[name] if name in _BY_NAME and _is_class(t, *name) else None


def _is_class(t: type, module: str, qualname: str) -> bool:
    """`t` is exactly module.qualname (not a subclass, nor a class of the same name elsewhere)."""
    return getattr(sys.modules.get(module), qualname, None) is t


def _class_name(t: type) -> tuple[str, str]:
    module, qualname = t.__module__, t.__qualname__
    if module == "__main__":
        raise ValueError(f"class {qualname} is defined in the notebook: a fresh kernel does not have it when "
                         "this value is decoded, so the value is pickled with its class")
    if "<locals>" in qualname or _find_class(module, qualname) is not t:
        raise ValueError(f"class {module}.{qualname} cannot be found again by its name")
    return module, qualname


def _enum_name(member: enum.Enum) -> str:
    name = member._name_
    if name is None or type(member)._member_map_.get(name) is not member:
        raise ValueError("a composite Flag value has no member name")
    return name


def _is_dataclass(t: type) -> bool:
    # dataclasses.is_dataclass's test, without importing dataclasses and inspect (a fifth of a script's first
    # activity call) where no value is one.
    return hasattr(t, "__dataclass_fields__")


def _fields(cls: type) -> tuple[Any, ...]:
    import dataclasses  # loaded already: `cls` is a dataclass

    return dataclasses.fields(cls)


def _is_namedtuple(v: tuple[Any, ...]) -> bool:
    fields = getattr(type(v), "_fields", None)
    return (isinstance(fields, tuple) and len(fields) == len(v) and not getattr(v, "__dict__", None)
            and all(type(f) is str for f in fields))


_UNSET = ["~"]


def _is_slot(t: type, name: str) -> bool:
    return any(name in getattr(c, "__slots__", ()) for c in t.__mro__)


def _plain_state(t: type) -> None:
    """Dataclasses whose pickling is customised carry more (or other) state than their fields."""
    for hook in ("__reduce__", "__reduce_ex__", "__getstate__", "__setstate__", "__getnewargs__",
                 "__getnewargs_ex__"):
        if getattr(t, hook, None) is not getattr(object, hook, None):
            raise ValueError(f"dataclass {t.__qualname__} customises {hook}")


# ---------------------------------------------------------------------------------------------- decoding


class _Decoder:
    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = sources
        self.shared: list[Any] = []

    def node(self, n: Any) -> Any:
        if not isinstance(n, list):
            return n
        tag, *rest = n
        decode = _DECODERS.get(tag)
        if decode is None:
            raise DecodeError(f"unknown tagged node {tag!r}: the log was written by a newer durable_nb or modified")
        return decode(self, rest)

    def share(self, value: Any) -> Any:
        self.shared.append(value)
        return value

    def fill_items(self, target: Any, items: list[Any]) -> Any:
        for i in range(0, len(items), 2):
            target[self.node(items[i])] = self.node(items[i + 1])
        return target

    def bytes_(self, rest: list[Any]) -> bytes | bytearray:
        if rest[0] is not None:
            return binascii.a2b_base64(rest[0])
        source: Source = self.sources[rest[1]]
        return source.read()

    def leaf(self, rest: list[Any]) -> Any:
        codec, version, meta, first, count = rest
        index = len(self.shared)
        self.shared.append(None)
        # Leaves are safe codecs only: a document naming pickle is refused (UntrustedError), never unpickled.
        value = decode_value(codec, version, meta, self.sources[first:first + count], allow_pickle=False)
        self.shared[index] = value
        return value

    def dataclass(self, rest: list[Any]) -> Any:
        module, qualname, names, *values = rest
        cls = _find_class(module, qualname)
        if not isinstance(cls, type) or not _is_dataclass(cls) or [f.name for f in _fields(cls)] != names:
            raise DecodeError(f"{module}.{qualname} is not the dataclass with fields {names} it was when recorded")
        obj = self.share(object.__new__(cls))
        for name, value in zip(names, values, strict=True):
            if value != _UNSET:
                object.__setattr__(obj, name, self.node(value))
        return obj

    def object_array(self, rest: list[Any]) -> Any:
        import numpy as np

        shape, *items = rest
        arr = self.share(np.empty(tuple(shape), dtype=object))
        flat = arr.reshape(-1)
        for i, item in enumerate(items):
            flat[i] = self.node(item)
        return arr


def _list(d: _Decoder, rest: list[Any]) -> list[Any]:
    out: list[Any] = d.share([])
    out.extend(d.node(x) for x in rest)
    return out


def _set(d: _Decoder, rest: list[Any]) -> set[Any]:
    out: set[Any] = d.share(set())
    out.update(d.node(x) for x in rest)
    return out


def _ordered(d: _Decoder, rest: list[Any]) -> OrderedDict[Any, Any]:
    attrs, *items = rest
    out: OrderedDict[Any, Any] = d.share(OrderedDict())
    d.fill_items(out, items)
    if attrs is not None:
        for key, value in d.node(attrs).items():
            setattr(out, key, value)
    return out


def _default(d: _Decoder, rest: list[Any]) -> defaultdict[Any, Any]:
    name, *items = rest
    out: defaultdict[Any, Any] = d.share(defaultdict(None if name is None else _FACTORIES[name]))
    return d.fill_items(out, items)  # type: ignore[no-any-return]


def _counter(d: _Decoder, rest: list[Any]) -> Counter[Any]:
    out: Counter[Any] = d.share(Counter())
    return d.fill_items(out, rest)  # type: ignore[no-any-return]


def _deque(d: _Decoder, rest: list[Any]) -> deque[Any]:
    maxlen, *items = rest
    out: deque[Any] = d.share(deque(maxlen=maxlen))
    out.extend(d.node(x) for x in items)
    return out


def _pandas_timestamp(_: _Decoder, rest: list[Any]) -> Any:
    pd, np = _pandas(), _numpy()
    count, unit, zone = rest
    value = pd.Timestamp(np.datetime64(count, unit))
    return value if zone is None else value.tz_localize("UTC").tz_convert(_tz(zone))


def _bytearray(d: _Decoder, rest: list[Any]) -> bytearray:
    out = d.share(bytearray())
    out += d.bytes_(rest)
    return out  # type: ignore[no-any-return]


def _tz(n: Any) -> dt.tzinfo | None:
    if n is None:
        return None
    if n[0] == "tzf":
        offset = dt.timedelta(n[1], n[2], n[3])
        return dt.timezone(offset) if n[4] is None else dt.timezone(offset, n[4])
    if n[0] == "tzz":
        import zoneinfo  # deferred for start-up speed (see _BY_NAME)

        return zoneinfo.ZoneInfo(n[1])
    raise DecodeError(f"unknown time zone node {n[0]!r}")


def _enum(_: _Decoder, rest: list[Any]) -> Any:
    module, qualname, name = rest
    cls = _find_class(module, qualname)
    member = cls._member_map_.get(name) if isinstance(cls, enum.EnumMeta) else None
    if member is None:
        raise DecodeError(f"{module}.{qualname} has no member {name!r} (it had when recorded)")
    return member


def _namedtuple(d: _Decoder, rest: list[Any]) -> Any:
    module, qualname, *items = rest
    cls = _find_class(module, qualname)
    if not (isinstance(cls, type) and issubclass(cls, tuple) and len(getattr(cls, "_fields", ())) == len(items)):
        raise DecodeError(f"{module}.{qualname} is not the namedtuple of {len(items)} fields it was when recorded")
    return tuple.__new__(cls, [d.node(x) for x in items])


def _numpy() -> Any:
    import numpy

    return numpy


def _pandas() -> Any:
    import pandas  # a dependency of durable_nb, and imported already where one of its values was recorded

    return pandas


def _stdlib(name: str) -> Any:
    """A standard module, imported when a value of it is decoded (see _BY_NAME)."""
    return sys.modules.get(name) or importlib.import_module(name)


def _find_class(module: str, qualname: str) -> Any:
    """A class by name: attribute lookups only, in a module found as reference.loaded_module allows (never
    one only the log names), never `__main__`, whose classes a decode must not guess at."""
    if module == "__main__":
        raise DecodeError(f"class {qualname} of the notebook is not stored by name")
    obj: Any = loaded_module(module, f"class {module}.{qualname}")
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise DecodeError(f"class {module}.{qualname} cannot be found here ({exc})") from exc
    return obj


_DECODERS: dict[str, Callable[[_Decoder, list[Any]], Any]] = {
    "@": lambda d, r: d.shared[r[0]],
    "l": _list,
    "t": lambda d, r: tuple(d.node(x) for x in r),
    "d": lambda d, r: d.fill_items(d.share({}), r),
    "od": _ordered,
    "dd": _default,
    "s": _set,
    "fs": lambda d, r: frozenset(d.node(x) for x in r),
    "b": lambda d, r: bytes(d.bytes_(r)),
    "ba": _bytearray,
    "c": lambda d, r: complex(r[0], r[1]),
    "r": lambda d, r: range(r[0], r[1], r[2]),
    "dt": lambda d, r: dt.datetime(r[0], r[1], r[2], r[3], r[4], r[5], r[6], fold=r[7], tzinfo=_tz(r[8])),
    "da": lambda d, r: dt.date(*r),
    "ti": lambda d, r: dt.time(r[0], r[1], r[2], r[3], fold=r[4], tzinfo=_tz(r[5])),
    "td": lambda d, r: dt.timedelta(r[0], r[1], r[2]),
    "de": lambda d, r: _stdlib("decimal").Decimal(r[0]),
    "fr": lambda d, r: _stdlib("fractions").Fraction(r[0], r[1]),
    "u": lambda d, r: _stdlib("uuid").UUID(hex=r[0], is_safe=_stdlib("uuid").SafeUUID(r[1])),
    "p": lambda d, r: _PATHS[r[0]](r[1]),
    "ct": _counter,
    "dq": _deque,
    "sl": lambda d, r: slice(d.node(r[0]), d.node(r[1]), d.node(r[2])),
    "...": lambda d, r: ...,
    "pts": _pandas_timestamp,
    "ptd": lambda d, r: _pandas().Timedelta(_numpy().timedelta64(r[0], r[1])),
    "ppe": lambda d, r: _pandas().Period(ordinal=r[0], freq=r[1]),
    "nat": lambda d, r: _pandas().NaT,
    "pna": lambda d, r: _pandas().NA,
    "e": _enum,
    "nt": _namedtuple,
    "dc": _Decoder.dataclass,
    "O": _Decoder.object_array,
    "nd": lambda d, r: _numpy().dtype(r[0]),
    "L": _Decoder.leaf,
}
