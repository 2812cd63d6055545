"""``python -m bench [--quick] [--only SHAPE ...] [--private-redis] [--profile]``."""

from __future__ import annotations

import argparse
import gc
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from celery.result import AsyncResult

from bench import canvas_app, machine, profiling, redisinfo, suites, targets
from bench.fleet import Fleet
from bench.measure import Bench
from bench.server import PrivateRedis
from dagworker import Client, Settings

WORKERS_PER_ENGINE = 2


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes (under 2 minutes)")
    p.add_argument(
        "--only", action="append", choices=suites.SUITES, help="run only this (repeatable)"
    )
    p.add_argument(
        "--redis-url", default=os.environ.get("DAGWORKER_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    p.add_argument("--db", type=int, default=13, help="Redis DB for the bench (default 13)")
    p.add_argument("--private-redis", action="store_true", help="start a redis-server of our own")
    p.add_argument("--profile", action="store_true", help="cProfile the completion path instead")
    p.add_argument("--rounds", type=int, help="A/B pairs per comparison shape")
    return p.parse_args(argv)


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def _idle_rate(r: redis.Redis, seconds: float = 2.0) -> float:
    before = redisinfo.command_calls(r)
    time.sleep(seconds)
    return sum(redisinfo.diff(redisinfo.command_calls(r), before).values()) / seconds


def main(argv: list[str]) -> int:
    args = _parse(argv)
    # SIGTERM runs the same cleanup as Ctrl-C: workers stopped by pid, keys deleted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="dwbench-"))
    prefix = f"dwbench-{secrets.token_hex(3)}"
    private = PrivateRedis(tmp) if args.private_redis else None
    url = private.url if private else _with_db(args.redis_url, args.db)
    db = int(urlsplit(url).path.strip("/") or 0)
    r = redis.Redis.from_url(url, decode_responses=True)
    fleet = Fleet(url, prefix, tmp, r)
    try:
        print(machine.describe(r, url, prefix, db, private is not None), flush=True)
        canvas_app.configure(url, prefix)
        settings = Settings(redis_url=url, key_prefix=prefix, plugins=("bench.plugins",))
        probe_dir = tmp / "probe"
        probe_dir.mkdir()
        fleet.start_dagworker(WORKERS_PER_ENGINE, probe_dir, profile=args.profile)
        if not args.profile:
            fleet.start_canvas(WORKERS_PER_ENGINE)
        fleet.wait_ready()
        bench = Bench(
            r,
            redis.Redis.from_url(url),
            url,
            db,
            prefix,
            fleet,
            Client(settings=settings),
            probe_dir,
        )
        print(
            f"idle background (all workers up, server-wide): {_idle_rate(r):.0f} commands/s",
            flush=True,
        )
        if args.profile:
            profiling.run(bench, args.quick)
        else:
            _run_suites(bench, args)
        print(f"\nload average at the end: {machine.load_average()}")
    finally:
        # A signal arriving now (a second Ctrl-C, a SIGTERM) must not cut the cleanup short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _detach_canvas_results()
        fleet.stop()
        redisinfo.delete_prefix(r, f"{prefix}:*")
        if private:
            private.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _detach_canvas_results() -> None:
    """Every AsyncResult unsubscribes from the result backend in ``__del__``; those alive at
    interpreter exit would try after the (private) Redis is gone and print tracebacks."""
    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, AsyncResult):
            obj.backend = None


def _run_suites(bench: Bench, args: argparse.Namespace) -> None:
    plan = suites.sizes(args.quick)
    chosen = set(args.only or suites.SUITES)
    shapes = [plan.compare[name] for name in suites.COMPARE if name in chosen]
    figures = targets.Figures()
    if shapes:
        suites.compare(bench, shapes, args.rounds or plan.rounds, figures)
    if "scale-fanout" in chosen:
        suites.big_node(suites.scale_fanout(bench, plan.scale_fanout, figures, plan.rounds))
    if "scale-chain" in chosen:
        suites.scale_chain(bench, plan.scale_chain, figures, plan.rounds)
    print(targets.report(figures))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
