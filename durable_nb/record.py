"""Record: the base of the plain data classes a script's first activity call builds (a log's settings, a call,
an execution, a key, a retry policy).

Not dataclasses nor typing.NamedTuple, for start-up speed: a script pays for every class its imports build. A
dataclass costs about 2.5 M instructions to build, and the dataclasses module imports inspect (40 M more); a
NamedTuple under `from __future__ import annotations` compiles each field's annotation, and the first such
compile sets up all of CPython's AST types (9 M). Together that was a third of the first call. A record is a
class with `__match_args__` (its fields, in order), `__slots__ = __match_args__` and a typed `__init__`; this base
gives what the dataclasses did: equality by fields, a repr showing them, `replace` and `as_dict`. Like a
dataclass with eq, a record is not hashable unless its class says how.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Self


class Record:
    __slots__ = ()
    __match_args__: tuple[str, ...] = ()

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__match_args__)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__match_args__}

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` (field=value) applied."""
        unknown = set(changes) - set(self.__match_args__)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(sorted(unknown))}")
        copy = object.__new__(type(self))
        for name in self.__match_args__:
            object.__setattr__(copy, name, changes[name] if name in changes else getattr(self, name))
        return copy

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record) or type(other) is not type(self):
            return NotImplemented
        return self.as_tuple() == other.as_tuple()

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
        return f"{type(self).__name__}({shown})"
