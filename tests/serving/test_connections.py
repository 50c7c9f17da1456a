"""Connection hygiene pieces that need no live server: the accept-error log filter."""

import logging
import time

from turboseq.serving.connections import RateLimitedErrors


def _record(message: str, exc: BaseException | None = None) -> logging.LogRecord:
    return logging.LogRecord(
        "asyncio", logging.ERROR, __file__, 1, message, None, (type(exc), exc, None) if exc else None
    )


def test_a_storm_of_accept_errors_is_logged_once_per_period_without_tracebacks():
    limit = RateLimitedErrors(seconds=0.2)
    storm = [_record("socket.accept() out of system resource", OSError(24, "Too many open files")) for _ in range(50)]
    passed = [limit.filter(r) for r in storm]
    assert passed[0] and not any(passed[1:])
    assert storm[0].exc_info is None  # one line, no traceback
    time.sleep(0.25)
    later = _record("socket.accept() out of system resource", OSError(24, "Too many open files"))
    assert limit.filter(later) and "(49 similar messages suppressed)" in later.getMessage()
    assert limit.filter(_record("Task exception was never retrieved"))  # other messages pass untouched
