"""The header of every report: the machine, the Redis, and whether anyone else is using it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import redis

from bench import redisinfo


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def describe(r: redis.Redis, url: str, prefix: str, db: int, private: bool) -> str:
    server = r.info("server")
    others = redisinfo.other_clients(r, db)
    lines = [
        "dagworker bench",
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
        f"Redis {server['redis_version']}",
        f"redis: {url} ({'private server' if private else 'shared server'}), key prefix {prefix}",
        f"load average at the start: {load_average()}",
    ]
    if others:
        lines.append(
            f"WARNING: {others} other client connection(s) on this Redis server (other DBs). "
            "INFO commandstats and CPU are server-wide: command and Redis-CPU figures include "
            "their traffic. Use --private-redis or a quiet server."
        )
    return "\n".join(lines)
