"""Activities: function calls recorded one by one, so a long loop resumes where it died.

```python
@durable_nb.activity(retries=5, timeout=30, retry_on=(TimeoutError, ConnectionError))
def ask_model(prompt: str) -> str: ...
```

**Key.** A call's key is the function's identity (module + qualname), the fingerprint of the function (its
code and the globals it uses), the fingerprint of its arguments (bound to the signature, defaults applied;
or of `key(*args, **kwargs)` when `key=` is given) and the `version=` tag. A recorded call with the same key
returns its recorded result without calling the function.

**Occurrences and scope.** The n-th call with a key replays the n-th recording of that key, so a loop that
asks the same question twice gets both answers back in order. Recordings are looked up in the whole log (so a
new process after a crash finds them); the occurrence counters restart at every cell execution (plain or
`%%durable`; the IPython `pre_run_cell` event, and `execution_scope()` from the cell runner) and at process
start for scripts. Consequently, a later cell calling `ask_model("hi")` replays the first recording of that
key; pass a different `key=` / `version=` for a fresh one. A different call order on replay is not an error:
calls without a recording simply run. The function's fingerprint is taken once per scope (per cell execution,
per script run): a global it reads that changes in the middle of a loop is not noticed.

**Durability.** A call's result is durable before it is returned to the caller; only `recorded` calls
replay, so a call that died runs again. How (a journal beside the log, a background flusher, blobs for big
results) and what survives which crash: `durable_nb.log.calls`.

**Retries and timeouts.** See `activity()`. Every failed attempt is a row of the `attempt` table (error type,
message, traceback, the wait that followed); the successful attempt is the call row itself, and the `attempts`
view shows both. After the last attempt the original error propagates unchanged. Timeouts of `async def`
activities cancel the coroutine (asyncio.wait_for). A sync activity with `timeout=` runs each attempt in a
daemon thread: when it overruns, the caller gets TimeoutError and the thread is abandoned — it may still
finish and perform its side effects, and its result is discarded. Use timeouts on sync functions only when
that is harmless (idempotent calls), and prefer the client library's own timeout.

**Steps.** `step(name, *key_parts)` checkpoints a value computed in a `with` body; see `step`.

**Async.** `async def` activities are awaited like the function (in a `%%durable` cell with top-level await
too); concurrent calls (`asyncio.gather`, `gather(..., limit=8)`) each take their occurrence when they start,
which is the order the awaitables were given in, so a re-run replays the same calls. Async generators are
refused (see `_check_decoratable`): a stream is recorded as the list it produces, by an activity that collects it.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
import types
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, overload

import xxhash

from . import session
from .errors import EncodeError, LogError, Unfingerprintable
from .fingerprint import fingerprint, referenced_globals
from .log.calls import MISS, Call, Recorder, encode_result, failure
from .retry import Permanent, RetryOn, RetryPolicy

if TYPE_CHECKING:
    import inspect

__all__ = ["Permanent", "Step", "activity", "current_execution_id", "execution_scope", "gather", "reset_scope",
           "step"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- scope

class _Scope:
    """Occurrence counters and the cell execution that calls belong to (one per process)."""
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = 0
        self.execution_id: int | None = None
        self.counters: dict[tuple[str, str], int] = {}

    def reset(self, execution_id: int | None) -> None:
        with self.lock:
            self.generation += 1
            self.counters = {}
            self.execution_id = execution_id

    def occurrence(self, function: str, key: str) -> int:
        with self.lock:
            n = self.counters.get((function, key), 0)
            self.counters[(function, key)] = n + 1
            return n


_SCOPE = _Scope()


def reset_scope(execution_id: int | None = None) -> None:
    """Restart occurrence counting (a new cell execution begins); link later calls to `execution_id`."""
    _SCOPE.reset(execution_id)


@contextlib.contextmanager
def execution_scope(execution_id: int | None) -> Iterator[None]:
    """For the cell runner: around a `%%durable` cell's user code, so its calls are linked to the `execution`
    row and occurrences count from the start of the cell."""
    _SCOPE.reset(execution_id)
    try:
        yield
    finally:
        _SCOPE.execution_id = None


def current_execution_id() -> int | None:
    return _SCOPE.execution_id


_hooked_shells: weakref.WeakSet[Any] = weakref.WeakSet()


def _hook_ipython() -> None:
    """In IPython, restart occurrence counting at every cell (so re-running a cell replays from its start).
    Run at decoration and when a log gets its recorder (a step is not decorated)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or shell in _hooked_shells:
        return
    shell.events.register("pre_run_cell", _on_pre_run_cell)
    _hooked_shells.add(shell)


def _on_pre_run_cell(info: object = None) -> None:
    _SCOPE.reset(None)


# ------------------------------------------------------------------------------------------ activities

class _Spec:
    """What a decorated function needs per call: its identity, signature shortcuts, retry policy."""
    def __init__(self, fn: Callable[..., Any], options: dict[str, Any],
                 sleep: Callable[[float], Any] | None) -> None:
        self.fn = fn
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self.policy = RetryPolicy(**{k: options[k] for k in _POLICY_FIELDS})
        self.timeout: float | None = options["timeout"]
        self.key_fn: Callable[..., Any] | None = options["key"]
        self.version = "" if options["version"] is None else str(options["version"])
        self.sleep = sleep
        self.simple, self.defaults, self.required = _positional_shape(fn)
        self._fp: tuple[int, str] = (-1, "")

    @functools.cached_property
    def signature(self) -> inspect.Signature:
        import inspect  # deferred for start-up speed: only calls with keywords or other parameters bind by it

        return inspect.signature(self.fn)

    def function_fingerprint(self) -> str:
        generation = _SCOPE.generation
        if self._fp[0] != generation:
            self._fp = (generation, _function_fingerprint(self.fn))
        return self._fp[1]

    def call_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        material = self._key_material(args, kwargs)
        try:
            args_fp = fingerprint(material)
        except Unfingerprintable as exc:
            raise self._argument_error(args, kwargs, exc) from exc
        return xxhash.xxh3_128_hexdigest(f"{self.function_fingerprint()}\0{args_fp}\0{self.version}".encode())

    def _key_material(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.key_fn is not None:
            return ("key=", self.key_fn(*args, **kwargs))
        if self.simple and not kwargs and self.required <= len(args) <= len(self.defaults):
            return args + self.defaults[len(args):]
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if self.simple:
            return tuple(bound.arguments.values())
        return tuple(bound.arguments.items())

    def _argument_error(self, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> EncodeError:
        if self.key_fn is not None:
            return EncodeError(f"activity {self.name}: the value returned by its key= function cannot be "
                               f"fingerprinted ({exc}). Return a string, number or tuple of them.")
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        culprit = "?"
        for name, value in bound.arguments.items():
            try:
                fingerprint(value)
            except Unfingerprintable:
                culprit = name
                break
        return EncodeError(f"activity {self.name}: argument {culprit!r} cannot be fingerprinted for the "
                           f"call's key ({exc}). Pass key=lambda ...: <a fingerprintable value> to the "
                           "decorator to key calls by something else.")

    def invoke_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.timeout is None:
            return self.fn(*args, **kwargs)
        return _run_in_thread(self.name, self.fn, args, kwargs, self.timeout)

    async def invoke_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.timeout is None:
            return await self.fn(*args, **kwargs)
        import asyncio  # deferred for start-up speed: a script's first call must not import asyncio

        try:
            return await asyncio.wait_for(self.fn(*args, **kwargs), self.timeout)
        except TimeoutError:
            raise TimeoutError(f"activity {self.name} did not finish within {self.timeout} s") from None


def _function_fingerprint(fn: Any) -> str:
    """The function's code, defaults, closure and the globals it reads. A value that cannot be fingerprinted
    (an API client, a lock, a connection: common in activities) counts by its type only."""
    try:
        return fingerprint(fn)
    except Unfingerprintable:
        pass

    def value(v: object) -> object:
        try:
            return fingerprint(v)
        except Unfingerprintable:
            return ("unfingerprintable", type(v).__module__, type(v).__qualname__)


    cells = [c.cell_contents for c in fn.__closure__ or () if c.cell_contents is not None]
    names = sorted(referenced_globals(fn))
    return fingerprint((fn.__code__, value(fn.__defaults__), value(fn.__kwdefaults__), [value(c) for c in cells],
                        [(n, value(fn.__globals__.get(n))) for n in names]))


def _run_in_thread(name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                   timeout: float) -> Any:
    import contextvars

    box: dict[str, Any] = {}
    done = threading.Event()
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = ctx.run(fn, *args, **kwargs)
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f"durable_nb activity {name}", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"activity {name} did not finish within {timeout} s; its thread was abandoned "
                           "(it may still finish and perform its side effects; its result is discarded)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _attempt_failed(rec: Recorder, spec: _Spec, call: Call, exc: BaseException) -> float:
    """Record a failed attempt; return the wait before the next one, or raise the caller's error when the call
    has failed. Called after the `except` clause: raised in one, an error unwrapped from `Permanent` would get
    the wrapper as its context."""
    state = "timed-out" if isinstance(exc, TimeoutError) and spec.timeout is not None else "failed"
    delay = spec.policy.wait_before(call.attempt) if spec.policy.should_retry(exc, call.attempt) else None
    failed = failure(call, exc, state, delay)
    call.failures.append(failed)
    if delay is not None:
        rec.mark_pending(call)
        return delay
    call.state, call.finished_at = "failed", failed.finished_at
    rec.finish(call)
    raise _unwrap(exc)


def _succeeded(rec: Recorder, spec_name: str, call: Call, value: Any) -> None:
    try:
        call.result = encode_result(spec_name, value)
    except EncodeError as exc:
        call.failures.append(failure(call, exc, "failed"))
        call.state, call.finished_at = "failed", time.time()
        rec.finish(call)
        raise
    call.state, call.finished_at = "recorded", time.time()
    rec.finish(call)


def _abandon(rec: Recorder, call: Call, exc: BaseException) -> None:
    """An interrupt (KeyboardInterrupt, cancellation) between attempts: the call is failed, not running."""
    if call.state == "running":
        call.failures.append(failure(call, exc, "failed"))
        call.state, call.finished_at = "failed", time.time()
        rec.finish(call)


def _unwrap(exc: BaseException) -> BaseException:
    return exc.unwrap() if isinstance(exc, Permanent) else exc


def _replay_or_begin(spec: _Spec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Recorder, Any]:
    rec = session.current_log().call_recorder(_hook_ipython)
    key = spec.call_key(args, kwargs)
    occurrence = _SCOPE.occurrence(spec.name, key)
    row = rec.lookup(spec.name, key, occurrence, _SCOPE.generation)
    if row is not None:
        value = rec.load(spec.name, row)
        if value is not MISS:
            return rec, value
    return rec, rec.begin(spec.name, key, occurrence, "activity", _SCOPE.execution_id)


_POLICY_FIELDS = ("retries", "delay", "backoff", "max_delay", "jitter", "retry_on")
# The spec of each wrapper lives here, not in the wrapper's closure or attributes, so that fingerprinting a
# wrapper (a cell that calls an activity) sees only the wrapped function and its options, never the locks of
# this module. A wrapper restored from a pickle rebuilds its spec from those.
_SPECS: weakref.WeakKeyDictionary[Callable[..., Any], _Spec] = weakref.WeakKeyDictionary()


def _spec_of(wrapper: Callable[..., Any]) -> _Spec:
    spec = _SPECS.get(wrapper)
    if spec is None:
        fn, options = wrapper.__wrapped__, wrapper.__durable_activity__  # type: ignore[attr-defined]
        spec = _SPECS[wrapper] = _Spec(fn, options, None)
    return spec


_unlogged_warned: set[str] = set()


def _log_unusable(spec: _Spec, exc: LogError) -> None:
    """The log cannot record calls (damaged, read-only, full): the activity runs unrecorded; said once per log."""
    text = str(exc)
    if text not in _unlogged_warned:
        _unlogged_warned.add(text)
        print(f"durable: activity {spec.name} runs unrecorded (so do later calls on this log): {text}",
              file=sys.stderr, flush=True)


def _call_sync(wrapper: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    spec = _spec_of(wrapper)
    try:
        rec, call = _replay_or_begin(spec, args, kwargs)
    except LogError as exc:
        _log_unusable(spec, exc)
        return spec.invoke_sync(args, kwargs)
    if not isinstance(call, Call):
        return call
    sleep = spec.sleep or time.sleep
    try:
        while True:
            try:
                value = spec.invoke_sync(args, kwargs)
            except BaseException as exc:
                error = exc
            else:
                _succeeded(rec, spec.name, call, value)
                return value
            sleep(_attempt_failed(rec, spec, call, error))
            call.next_attempt()
    except BaseException as exc:
        _abandon(rec, call, exc)
        raise


async def _call_async(wrapper: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    spec = _spec_of(wrapper)
    try:
        rec, call = _replay_or_begin(spec, args, kwargs)
    except LogError as exc:
        _log_unusable(spec, exc)
        return await spec.invoke_async(args, kwargs)
    if not isinstance(call, Call):
        return call
    try:
        while True:
            try:
                value = await spec.invoke_async(args, kwargs)
            except BaseException as exc:
                error = exc
            else:
                _succeeded(rec, spec.name, call, value)
                return value
            import asyncio  # deferred for start-up speed (loaded already: this runs in an event loop)
            import inspect  # loaded by asyncio

            waited = (spec.sleep or asyncio.sleep)(_attempt_failed(rec, spec, call, error))
            if inspect.isawaitable(waited):
                await waited
            call.next_attempt()
    except BaseException as exc:
        _abandon(rec, call, exc)
        raise


def _wrap(fn: Callable[..., Any], options: dict[str, Any], sleep: Callable[[float], Any] | None) -> Any:
    # The wrapper reaches this module through `sys` (a module: fingerprinted and pickled by name), held in its
    # closure: a cell's key or cloudpickle then sees the wrapped function and its options, not this module's
    # locks, and a replayed cell that rebinds the wrapper's globals to the notebook's keeps it working.
    system = sys
    wrapper: Callable[..., Any]
    if _is_coroutine_function(fn):
        async def call_activity(*args: Any, **kwargs: Any) -> Any:
            return await system.modules["durable_nb.calls"]._call_async(call_activity, args, kwargs)
        wrapper = call_activity
    else:
        def call_sync_activity(*args: Any, **kwargs: Any) -> Any:
            return system.modules["durable_nb.calls"]._call_sync(call_sync_activity, args, kwargs)
        wrapper = call_sync_activity
    functools.update_wrapper(wrapper, fn)
    wrapper.__durable_activity__ = options  # type: ignore[union-attr]
    _SPECS[wrapper] = _Spec(fn, options, sleep)
    return wrapper


@overload
def activity(fn: F, /) -> F: ...


@overload
def activity(*, retries: int = 0, delay: float = 1.0, backoff: float = 2.0, max_delay: float = 60.0,
             jitter: float = 0.5, timeout: float | None = None, retry_on: RetryOn = Exception,
             key: Callable[..., Any] | None = None, version: str | None = None,
             sleep: Callable[[float], Any] | None = None) -> Callable[[F], F]: ...


def activity(fn: Callable[..., Any] | None = None, /, *, retries: int = 0, delay: float = 1.0,
             backoff: float = 2.0, max_delay: float = 60.0, jitter: float = 0.5, timeout: float | None = None,
             retry_on: RetryOn = Exception, key: Callable[..., Any] | None = None, version: str | None = None,
             sleep: Callable[[float], Any] | None = None) -> Any:
    """Record every call of a function in the current log (durable_nb.open_log, or the default-log rules).

    retries: extra attempts after a failure (0: one attempt). Before retry n the caller waits
        min(max_delay, delay * backoff ** (n - 1)) seconds, of which the fraction `jitter` is random.
    retry_on: an exception class, a tuple of them, or a predicate `exc -> bool`; errors it rejects, and
        `Permanent` errors, are not retried. Interrupts (KeyboardInterrupt, cancellation) never are.
    timeout: seconds per attempt; a timed-out attempt raises TimeoutError (retried if retry_on allows it). For
        sync functions the attempt runs in a thread that is abandoned when it overruns (see the module doc).
    key: a function of the call's arguments whose fingerprint replaces the arguments' (e.g. to key a method
        by `prompt` only, or to key an argument that cannot be fingerprinted).
    version: a tag in every key: change it to record fresh results.
    sleep: how to wait between attempts (default time.sleep / asyncio.sleep); tests pass a fake clock.

    Supported: functions, lambdas, nested functions, `async def` functions, and methods defined in a class
    body (then `self` is an argument: it must be fingerprintable, or pass key=). Refused with an error:
    generators (a stream cannot be recorded as one result), bound methods, classes and other callables.
    """
    options: dict[str, Any] = {"retries": retries, "delay": delay, "backoff": backoff, "max_delay": max_delay,
               "jitter": jitter, "retry_on": retry_on, "timeout": timeout, "key": key, "version": version}
    RetryPolicy(**{k: options[k] for k in _POLICY_FIELDS})  # bad settings fail here, at decoration
    if timeout is not None and timeout <= 0:
        raise ValueError(f"activity timeout={timeout}: expected a positive number of seconds, or None")

    def decorate(func: Callable[..., Any]) -> Any:
        _check_decoratable(func)
        _hook_ipython()
        return _wrap(func, options, sleep)

    return decorate(fn) if fn is not None else decorate


def _check_decoratable(func: object) -> None:
    name = getattr(func, "__qualname__", repr(func))
    if isinstance(func, types.MethodType):
        raise TypeError(f"@activity got the bound method {name}: decorate the function in the class body "
                        "(self then becomes an argument), or wrap the call in a function.")
    if not isinstance(func, types.FunctionType):
        raise TypeError(f"@activity expects a function (def, async def or lambda), got {type(func).__name__} "
                        f"{name}. Wrap the call in a function: @activity def call(...): return obj(...)")
    if func.__code__.co_flags & _CO_ASYNC_GENERATOR:
        raise TypeError(f"@activity cannot record the async generator function {name}: a stream cannot be one "
                        "recorded result, and a retry after part of it was consumed would repeat items. Collect "
                        "it in an activity: @activity async def ask(p): return [c async for c in stream(p)] "
                        "(print the chunks inside it to see them live: the cell's output is recorded too).")
    if func.__code__.co_flags & _CO_GENERATOR:
        raise TypeError(f"@activity cannot record the generator function {name}: its values are "
                        "produced lazily and cannot be one recorded result. Return a list instead, or make "
                        "each item an activity call.")


# CPython's code flags (inspect.CO_*): read here so that a script's first call need not import inspect.
_CO_VARARGS, _CO_VARKEYWORDS, _CO_GENERATOR, _CO_COROUTINE, _CO_ASYNC_GENERATOR = 0x4, 0x8, 0x20, 0x80, 0x200
_NO_DEFAULT = object()  # in `_Spec.defaults`: a required parameter (never part of a key: arguments fill it)


def _positional_shape(fn: Callable[..., Any]) -> tuple[bool, tuple[Any, ...], int]:
    """Whether every parameter is positional (a call's key is then its arguments followed by the remaining
    defaults), the parameters' defaults by position, and how many are required. Read from the code object,
    unless the signature is not the code's (functools.wraps' __wrapped__, a __signature__): inspect says then."""
    if hasattr(fn, "__wrapped__") or hasattr(fn, "__signature__"):
        import inspect  # deferred for start-up speed: only such functions need it

        params = list(inspect.signature(fn).parameters.values())
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        defaults = tuple(_NO_DEFAULT if p.default is p.empty else p.default for p in params)
        return all(p.kind in positional for p in params), defaults, sum(p.default is p.empty for p in params)
    code, given = fn.__code__, fn.__defaults__ or ()
    simple = not code.co_kwonlyargcount and not code.co_flags & (_CO_VARARGS | _CO_VARKEYWORDS)
    return simple, (_NO_DEFAULT,) * (code.co_argcount - len(given)) + given, code.co_argcount - len(given)


def _is_coroutine_function(fn: Callable[..., Any]) -> bool:
    # inspect's answer where inspect is loaded (only then can a function carry its markcoroutinefunction mark).
    inspect = sys.modules.get("inspect")
    if inspect is not None:
        return bool(inspect.iscoroutinefunction(fn))
    return bool(fn.__code__.co_flags & _CO_COROUTINE)  # a function: _check_decoratable said so


async def gather(*aws: Awaitable[T], limit: int | None = None) -> list[T]:
    """`asyncio.gather` with at most `limit` of the awaitables running at once (None: no limit); the results
    in the order given. The first error propagates and the awaitables not yet finished are cancelled (calls
    already recorded stay recorded, so a re-run replays them and runs the rest).

    ```python
    answers = await durable_nb.gather(*(ask(p) for p in prompts), limit=8)
    ```
    """
    import asyncio  # deferred for start-up speed: a script's first call must not import asyncio

    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"gather limit={limit!r}: expected a positive integer, or None for no limit")
    if limit is None or limit >= len(aws):
        tasks = [asyncio.ensure_future(aw) for aw in aws]
    else:
        semaphore = asyncio.Semaphore(limit)

        async def bounded(aw: Awaitable[T]) -> T:
            started = False
            try:
                async with semaphore:  # FIFO: the awaitables start in the order given
                    started = True
                    return await aw
            finally:
                if not started and asyncio.iscoroutine(aw):
                    aw.close()  # cancelled while waiting its turn: never "was never awaited"

        tasks = [asyncio.ensure_future(bounded(aw)) for aw in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        # Let the cancelled ones finish (their activity calls record themselves as failed, not running).
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# ----------------------------------------------------------------------------------------------- steps

class Step:
    """A checkpoint of a value computed in a `with` body.

    ```python
    for epoch in range(50):
        with durable_nb.step("epoch", epoch) as s:
            if not s.replayed:             # the body always runs: a with block cannot be skipped
                state = train_one_epoch(state)
                s.result = state           # recorded when the block exits without an error
        state = s.result                   # the recorded value on replay
    ```
    `replayed` is True when a recording of this (name, key_parts, occurrence) was found; `result` is then the
    recorded value. A block that sets no result records None (a marker that a side effect was done). A block
    that raises is recorded as a failed attempt and the error propagates; steps are not retried. The key is
    the name and the fingerprint of `key_parts` only: include whatever the body's result depends on.
    """
    def __init__(self, name: str, key_parts: tuple[Any, ...]) -> None:
        self.name = name
        self.key_parts = key_parts
        self.replayed = False
        self._result: Any = None
        self._rec: Recorder | None = None
        self._call: Call | None = None

    @property
    def result(self) -> Any:
        return self._result

    @result.setter
    def result(self, value: Any) -> None:
        self._result = value

    def __enter__(self) -> Step:
        function = f"step:{self.name}"
        try:
            key = fingerprint(self.key_parts)
        except Unfingerprintable as exc:
            raise EncodeError(f"step {self.name!r}: its key parts cannot be fingerprinted ({exc}). Pass "
                              "plain values (numbers, strings, tuples) after the name.") from exc
        rec = session.current_log().call_recorder(_hook_ipython)
        occurrence = _SCOPE.occurrence(function, key)
        row = rec.lookup(function, key, occurrence, _SCOPE.generation)
        if row is not None:
            value = rec.load(function, row)
            if value is not MISS:
                self.replayed, self._result = True, value
                return self
        self._rec, self._call = rec, rec.begin(function, key, occurrence, "step", _SCOPE.execution_id)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        rec, call = self._rec, self._call
        # Done with the log: a finished step is plain data (name, key, result), stored and replayed like any value.
        self._rec = self._call = None
        if rec is None or call is None:
            return
        if exc is not None:
            call.failures.append(failure(call, exc, "failed"))
            call.state, call.finished_at = "failed", time.time()
            rec.finish(call)
            return
        _succeeded(rec, call.function, call, self._result)


def step(name: str, *key_parts: Any) -> Step:
    """A checkpoint context: `with durable_nb.step("epoch", epoch) as s: ...` (see Step)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"step name must be a non-empty string, got {name!r}")
    return Step(name, key_parts)
