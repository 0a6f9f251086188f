"""Retries with exponential backoff on HTTP 429 and 5xx only, and a simple submission rate limiter.

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
from typing import Callable, TypeVar

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


def call_with_backoff(
    func: Callable[[], T],
    policy: Backoff = Backoff(),
    *,
    what: str = "request",
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> T:
    """Call `func`, retrying on 429/5xx per `policy`; other errors, and the last retryable one, propagate."""
    attempt = 0
    while True:
        try:
            return func()
        except Exception as error:  # noqa: BLE001 - classified below, re-raised when not retryable
            if not is_retryable(error) or attempt >= policy.retries:
                raise
            delay = policy.delay(attempt, rng)
            log.warning(
                "%s: HTTP %s (%s); retry %d/%d in %.1f s",
                what,
                http_status(error),
                error,
                attempt + 1,
                policy.retries,
                delay,
            )
            sleep(delay)
            attempt += 1


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
