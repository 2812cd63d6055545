"""The per-run Redis lock: SET NX PX with a random token, released only by its owner.

The lock keeps orchestrators of one run from doing the same work at once; it is not what makes
them correct. Correctness rests on the version check in ``commit.lua``: an orchestrator that
stalls past the lock's lifetime finds the version moved and writes nothing.

Round trips: ``acquire`` can carry the reads its owner needs next in the same pipeline (they are
thrown away when the lock was not taken), and ``commit.lua`` releases the lock with a successful
commit (``released_by_commit``), so a settle costs no separate SET or release.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import redis

from dagworker.errors import LockNotAcquired

# Compare-and-delete: expiry followed by another owner's SET must not be undone by our release.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RunLock:
    def __init__(self, client: redis.Redis, key: str, ttl_s: float, wait_s: float = 60.0) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.wait_s = wait_s
        self.token = secrets.token_hex(8)
        self._release = client.register_script(_RELEASE)
        self._released = False

    def acquire(self, reads: Callable[[Any], None] | None = None) -> list[Any]:
        """Take the lock and return the replies of ``reads(pipe)``, read while holding it.

        The first attempt sends the reads in the SET's round trip (replies discarded when the
        lock was not taken); while another orchestrator holds the lock, retries send only the
        SET, and the reads follow once it is taken, so waiting costs one command per try.
        """
        deadline = time.monotonic() + self.wait_s
        delay = 0.001
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.key, self.token, nx=True, px=self.ttl_ms)
        if reads is not None:
            reads(pipe)
        taken, *replies = pipe.execute()
        while not taken:
            if time.monotonic() >= deadline:
                raise LockNotAcquired(
                    f"could not take {self.key} within {self.wait_s:.0f}s "
                    "(another orchestrator holds it; it expires on its own)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            taken = self.client.set(self.key, self.token, nx=True, px=self.ttl_ms)
            if taken and reads is not None:
                pipe = self.client.pipeline(transaction=False)
                reads(pipe)
                replies = pipe.execute()
        self._released = False
        return replies

    def released_by_commit(self) -> None:
        """``commit.lua`` released the lock (if it was still ours) with its commit."""
        self._released = True

    def release(self) -> bool:
        """Release if still ours; False when it had expired (tolerated: commits are fenced)."""
        if self._released:
            return False
        self._released = True
        return bool(self._release(keys=[self.key], args=[self.token]))

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
