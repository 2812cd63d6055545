"""The Celery settings dagworker's workers run with (no services needed)."""

from __future__ import annotations

from dagworker.settings import Settings
from dagworker.worker import celery_config


def transport(visibility_timeout: float) -> dict[str, object]:
    options = celery_config(Settings(visibility_timeout=visibility_timeout))
    result: dict[str, object] = options["broker_transport_options"]
    return result


def test_a_worker_killed_mid_sweep_blocks_redelivery_briefly_not_for_kombus_300s() -> None:
    # Given a short visibility timeout (tests, chaos) and the production default
    short, default = transport(4.0), transport(3600.0)
    # Then the restore mutex a killed sweeper leaves behind expires soon after the timeout
    assert short["unacked_mutex_expire"] == 5
    assert default["unacked_mutex_expire"] == 300
    # and messages of dead workers are swept in step with the visibility timeout
    assert short["unacked_restore_interval"] == 1 and default["unacked_restore_interval"] == 10
    assert short["visibility_timeout"] == 4.0
