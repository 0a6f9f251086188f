"""One retry layer for Earth Engine requests: `google.api_core.retry`, on HTTP 429 and 5xx only.

Earth Engine's client retries too (`ee.data.setMaxRetries`, 5 by default, inside googleapiclient's
`execute`), so wrapping its calls in a second loop multiplied the attempts (6 × 6 = 36 for one request,
with two unrelated backoff schedules). `call_with_backoff` therefore switches the client's own retries off
and retries with `google.api_core.retry.retry_target`: one schedule, the `Backoff` policy's, with a bounded
number of attempts and every retry logged.

Earth Engine's client turns an HTTP error into `ee.EEException(message)` raised inside the `except` block
that caught the `googleapiclient.errors.HttpError`, so the HTTP status is on the exception's `__context__`
(or `__cause__`). `http_status` finds it there; anything without a status (a bad request body, a missing
asset, a programming error) is not retried.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

from google.api_core.retry import retry_target

log = logging.getLogger(__name__)

T = TypeVar("T")


def http_status(error: BaseException) -> int | None:
    """The HTTP status behind an exception (itself or a chained HttpError), or None."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = getattr(current, "status_code", None)
        if status is None:
            response = getattr(current, "resp", None)
            status = getattr(response, "status", None)
        if status is not None:
            try:
                return int(status)
            except (TypeError, ValueError):
                return None
        current = current.__cause__ or current.__context__
    return None


def is_retryable(error: BaseException) -> bool:
    """True for HTTP 429 (too many requests) and 5xx (server errors); False for everything else."""
    status = http_status(error)
    return status is not None and (status == 429 or 500 <= status <= 599)


@dataclass(frozen=True)
class Backoff:
    """Retry policy: `retries` further attempts, delays base·2^k capped at max_delay, with ±jitter fraction."""

    retries: int = 5
    base_delay: float = 2.0
    max_delay: float = 120.0
    jitter: float = 0.25

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        delay = min(self.max_delay, self.base_delay * (2**attempt))
        return max(0.0, delay * (1 + self.jitter * (2 * rng() - 1)))


def disable_client_retries() -> None:
    """Switch off the Earth Engine client's own retries, so that `call_with_backoff` is the only layer."""
    import ee

    ee.data.setMaxRetries(0)


def call_with_backoff(
    func: Callable[[], T],
    policy: Backoff = Backoff(),
    *,
    what: str = "request",
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> T:
    """Call `func`, retrying on 429/5xx per `policy`; other errors, and the last retryable one, propagate.

    The loop is `google.api_core.retry.retry_target` with `is_retryable` as its predicate. The waits go
    through `sleep` (injectable, so tests run on a fake clock): the delay generator sleeps itself and hands
    api_core a zero wait. The Earth Engine client's own retries are switched off first.
    """
    disable_client_retries()
    retried = 0
    delays: list[float] = []

    def on_error(error: Exception) -> None:
        # retry_target calls this for each retryable error before it asks `waits` for the next delay;
        # raising here ends the loop with this (the last) error, unchanged.
        if retried >= policy.retries:
            raise error
        delays.append(policy.delay(retried, rng))
        log.warning(
            "%s: HTTP %s (%s); retry %d/%d in %.1f s",
            what, http_status(error), error, retried + 1, policy.retries, delays[-1],
        )

    def waits() -> Iterator[float]:
        nonlocal retried
        while True:
            sleep(delays.pop())
            retried += 1
            yield 0.0

    return retry_target(func, is_retryable, waits(), timeout=None, on_error=on_error)


class RateLimiter:
    """At most `per_second` calls a second: `wait()` sleeps until the next call is allowed."""

    def __init__(
        self,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.interval = 1.0 / per_second
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> None:
        """Block until a call is allowed, then reserve the slot."""
        now = self._clock()
        if self._next is not None and now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval
