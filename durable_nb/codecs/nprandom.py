"""numpy's random generators — `Generator` (`np.random.default_rng()`), the legacy `RandomState` and their bit
generators — as the bit generator's name, its state (plain integers and arrays) and the seed sequence it spawns
children from. Modern numpy code keeps one `rng` that every drawing cell changes: pickled, a colleague who has not
trusted the log would rerun all those cells. Classes come from a fixed list of numpy's own, never from the log."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import DecodeError
from .tagged import decode_tree, encode_tree

if TYPE_CHECKING:
    from .streams import Sink, Source

_BIT_GENERATORS = ("MT19937", "PCG64", "PCG64DXSM", "Philox", "SFC64")
_CLASSES = ("Generator", "RandomState", *_BIT_GENERATORS)


class NpRandomCodec:
    name = "nprandom"
    version = 1
    safe = True

    def accepts(self, value: Any) -> bool:
        random = getattr(sys.modules.get("numpy"), "random", None)
        name = type(value).__name__
        return random is not None and name in _CLASSES and type(value) is getattr(random, name, None)

    def encode(self, value: Any, sink: Sink) -> dict[str, Any]:
        kind = type(value).__name__
        bits = value if kind in _BIT_GENERATORS else getattr(value, "bit_generator", None) or value._bit_generator
        # RandomState's own state adds the cached normal of its legacy gauss (has_gauss, gauss).
        state = value.get_state(legacy=False) if kind == "RandomState" else bits.state
        if bits.state["bit_generator"] != type(bits).__name__:
            raise ValueError(f"a {type(bits).__name__} that calls itself {bits.state['bit_generator']}")
        return encode_tree({"class": kind, "state": state, "seed": _seed_sequence(bits)}, sink)

    def decode(self, meta: dict[str, Any], sources: Sequence[Source]) -> Any:
        import numpy as np

        tree = decode_tree(meta, sources)
        kind, state = tree["class"], tree["state"]
        name = state.get("bit_generator") if isinstance(state, dict) else None
        if kind not in _CLASSES or name not in _BIT_GENERATORS:
            raise DecodeError(f"{kind!r} over {name!r} is not a numpy generator this codec stores")
        seed = tree["seed"]
        bits = getattr(np.random, name)(None if seed is None else np.random.SeedSequence(**seed))
        try:
            if kind == "RandomState":
                value = np.random.RandomState(bits)
                value.set_state(state)
                return value
            bits.state = state
        except (TypeError, ValueError, KeyError) as exc:
            raise DecodeError(f"the state of a numpy {name} does not fit it ({exc}): the log was modified") from exc
        return bits if kind in _BIT_GENERATORS else np.random.Generator(bits)


def _seed_sequence(bits: Any) -> dict[str, Any] | None:
    """What the bit generator's `spawn()` derives children from (absent when it was seeded from a state)."""
    seq: Any = getattr(bits, "seed_seq", None)
    if type(seq).__name__ != "SeedSequence":
        return None
    entropy = seq.entropy
    return {"entropy": entropy if isinstance(entropy, int) else [int(e) for e in entropy],
            "spawn_key": [int(k) for k in seq.spawn_key], "pool_size": int(seq.pool_size),
            "n_children_spawned": int(seq.n_children_spawned)}
