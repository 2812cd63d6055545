"""The per-run Redis lock: SET NX PX with a random token, released only by its owner.

The lock keeps orchestrators of one run from doing the same work at once; it is not what makes
them correct. Correctness rests on the version check in ``commit.lua``: an orchestrator that
stalls past the lock's lifetime finds the version moved and writes nothing.
"""

from __future__ import annotations

import secrets
import time
from types import TracebackType

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

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        delay = 0.001
        while not self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            if time.monotonic() >= deadline:
                raise LockNotAcquired(
                    f"could not take {self.key} within {self.wait_s:.0f}s "
                    "(another orchestrator holds it; it expires on its own)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def release(self) -> bool:
        """Release if still ours; False when it had expired (tolerated: commits are fenced)."""
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
