"""Retry policy of an activity: which errors are retried, and how long to wait before each new attempt.

The wait before retry n (1-based) is `min(max_delay, delay * backoff ** (n - 1))`, of which the fraction
`jitter` is drawn at random (so many clients that failed together do not retry together): with jitter=0.5 a
nominal 4 s wait becomes a uniform draw in [2 s, 4 s].
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from .record import Record

if TYPE_CHECKING:
    import random

RetryOn: TypeAlias = "type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]"


class Permanent(Exception):
    """An error that must not be retried.

    Either wrap the real error, `raise durable_nb.Permanent(ValueError("bad request"))` (the wrapped error is
    what the caller sees), or subclass it, `class BadRequest(durable_nb.Permanent): ...` (raised as is).
    """

    def __init__(self, error: BaseException | str | None = None) -> None:
        self.error = error if isinstance(error, BaseException) else None
        super().__init__(error if error is not None else "permanent error")

    def unwrap(self) -> BaseException:
        """The error the caller should see."""
        return self.error if self.error is not None else self


class RetryPolicy(Record):
    __match_args__ = ("retries", "delay", "backoff", "max_delay", "jitter", "retry_on", "rng")
    __slots__ = __match_args__

    def __init__(self, retries: int = 0, delay: float = 1.0, backoff: float = 2.0, max_delay: float = 60.0,
                 jitter: float = 0.5, retry_on: RetryOn = Exception, rng: random.Random | None = None) -> None:
        if retries < 0 or delay < 0 or backoff < 1 or max_delay < 0:
            raise ValueError(
                f"retry settings out of range: retries={retries} (>= 0), delay={delay} (>= 0), "
                f"backoff={backoff} (>= 1), max_delay={max_delay} (>= 0)")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter={jitter}: expected a fraction of the delay between 0 and 1")
        if not (_is_error_class(retry_on) or callable(retry_on) or (
                isinstance(retry_on, tuple) and all(_is_error_class(t) for t in retry_on))):
            raise TypeError(f"retry_on={retry_on!r}: expected an exception class, a tuple of them, or a "
                            "predicate taking the exception and returning True to retry")
        self.retries = retries
        self.delay = delay
        self.backoff = backoff
        self.max_delay = max_delay
        self.jitter = jitter
        self.retry_on = retry_on
        self.rng = rng  # None: one generator for the process

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """After failed attempt number `attempt` (1-based), is another one allowed for this error?"""
        if attempt > self.retries or isinstance(error, Permanent) or not isinstance(error, Exception):
            return False
        retry_on = self.retry_on
        if isinstance(retry_on, (tuple, type)):
            return isinstance(error, retry_on)
        return bool(retry_on(error))

    def wait_before(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 = the second attempt)."""
        nominal = min(self.max_delay, self.delay * self.backoff ** (retry - 1))
        return nominal * (1 - self.jitter * (self.rng or _process_rng()).random())


@functools.cache
def _process_rng() -> random.Random:
    # Seeded on first use: creating a Random per policy read 2.5 KB from os.urandom on every activity's creation.
    import random  # deferred for start-up speed: a script's first activity call need not pay for it

    return random.Random()


def _is_error_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseException)
