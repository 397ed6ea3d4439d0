"""durable_nb.record: the plain records that replaced dataclasses on a script's first call behave as those did."""

from __future__ import annotations

import pickle

import pytest

from durable_nb.keys import PublicKey
from durable_nb.log.current import Settings
from durable_nb.retry import RetryPolicy


def test_records_compare_show_and_copy_by_their_fields_in_order() -> None:
    a = Settings("x.durable.db", "full")
    assert a == Settings("x.durable.db", "full") and a != Settings("x.durable.db")
    assert a != ("x.durable.db", "full", False), "a record is not equal to a tuple of its values"
    assert repr(a) == "Settings(path='x.durable.db', durability='full', from_scratch=False)"
    assert a.as_tuple() == ("x.durable.db", "full", False)
    assert a.as_dict() == {"path": "x.durable.db", "durability": "full", "from_scratch": False}
    b = a.replace(from_scratch=True)
    assert (b.from_scratch, a.from_scratch, b.path) == (True, False, "x.durable.db")
    with pytest.raises(TypeError, match="no field colour"):
        a.replace(colour="red")
    with pytest.raises(TypeError):
        hash(a)  # like a dataclass with eq: not hashable unless its class says how


def test_keys_stay_hashable_and_validated_and_records_pickle() -> None:
    key = PublicKey(bytes(range(32)), "me")
    assert {key: 1}[PublicKey(bytes(range(32)), "me")] == 1
    assert pickle.loads(pickle.dumps(key)) == key
    with pytest.raises(Exception, match="32 bytes, not 3"):
        PublicKey(b"abc")
    with pytest.raises(ValueError, match=r"backoff=0\.5"):
        RetryPolicy(backoff=0.5)
    assert pickle.loads(pickle.dumps(RetryPolicy(retries=3))).retries == 3
