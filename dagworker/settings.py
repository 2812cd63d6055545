"""Settings from the environment (DESIGN §8), with an optional config module.

``DAGWORKER_CONFIG_MODULE=mypkg.dagworker_settings`` names a module whose UPPERCASE attributes
(``REDIS_URL``, ``KEY_PREFIX`` ...) are used where the environment does not set a value.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from dagworker.errors import ConfigError

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = ""  # "" means: the Redis URL
    plugins: tuple[str, ...] = ()
    key_prefix: str = "dagworker"
    default_queue: str = "dagworker"
    #: Seconds before an unacknowledged message is redelivered; must exceed the longest task.
    visibility_timeout: float = 3600.0
    lock_timeout: float = 10.0
    reconcile_interval: float = 30.0
    #: A claimed batch not confirmed as published for this long is republished.
    publish_grace: float = 15.0
    max_tasks_per_node: int = 1_000_000
    max_artifacts_per_task: int = 1_000_000
    max_artifact_bytes: int = 1_000_000
    launch_batch: int = 500
    #: Celery task events (task-received/started/succeeded...), which Flower needs. Off
    #: (DAGWORKER_TASK_EVENTS=0) saves two to three PUBLISHes per task for throughput-bound
    #: deployments that do not watch tasks in Flower.
    task_events: bool = True
    #: A completion that settles its node's only task launches the successors it makes ready
    #: in the same script (dagworker.handoff): 7 round trips fewer per chain
    #: link. 0 sends every settlement through the orchestrator's lock and commit instead.
    handoff: bool = True
    #: Seconds a finished run is kept after it ended; the reconciler deletes it after that
    #: (every key of the run; status, retry and replay then report it unknown). 0 keeps
    #: finished runs for ever.
    result_ttl: float = 7 * 86_400.0
    #: How often ``celery beat`` sends ``dagworker.schedule.tick`` (seconds).
    schedule_interval: float = 1.0
    #: The queue of the tick task ("" means the default queue).
    schedule_queue: str = ""

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        module_values = _module_values(env.get("DAGWORKER_CONFIG_MODULE", ""))
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"DAGWORKER_{f.name.upper()}", module_values.get(f.name.upper()))
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, f.type, raw)
        settings = cls(**values)
        if not _PREFIX_RE.match(settings.key_prefix):
            raise ConfigError(
                f"DAGWORKER_KEY_PREFIX={settings.key_prefix!r}: use 1-64 letters, digits, _ . -"
            )
        if settings.lock_timeout <= 0 or settings.reconcile_interval <= 0:
            raise ConfigError("DAGWORKER_LOCK_TIMEOUT and DAGWORKER_RECONCILE_INTERVAL must be > 0")
        if not settings.result_ttl >= 0:
            raise ConfigError(
                f"DAGWORKER_RESULT_TTL={settings.result_ttl!r}: seconds, 0 to keep runs for ever"
            )
        return settings


def _module_values(name: str) -> dict[str, Any]:
    if not name:
        return {}
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"DAGWORKER_CONFIG_MODULE={name!r} cannot be imported: {exc}") from exc
    return {k: v for k, v in vars(module).items() if k.isupper()}


def _coerce(name: str, type_name: Any, raw: Any) -> Any:
    env_name = f"DAGWORKER_{name.upper()}"
    try:
        if type_name in ("bool", bool):
            return _boolean(raw)
        if type_name in ("float", float):
            return float(raw)
        if type_name in ("int", int):
            return int(raw)
        if "tuple" in str(type_name):
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(i.strip() for i in items if str(i).strip())
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{env_name}={raw!r} is not a valid {type_name}") from exc


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"not a boolean: {raw!r} (use 1/0, true/false, yes/no, on/off)")
