"""A rollback survives crashes (DESIGN §6-7): SIGKILLed worker subprocesses, lost publishes."""

from __future__ import annotations

from collections import Counter

from tests.conftest import Deployment, wait_for

WAIT = 90

SAGA = {
    "name": "saga-crash",
    "nodes": [
        {"slug": "a", "plugin": "t_saga", "config": {"undo_s": 2.0}},
        {"slug": "b", "plugin": "t_saga", "depends_on": ["a"]},
        {"slug": "c", "plugin": "t_saga", "depends_on": ["b"], "config": {"fail": True}},
    ],
}


def phase_count(d: Deployment, run_id: str, phase: str) -> Counter[str]:
    return Counter(c["node"] for c in d.calls(run_id) if c.get("phase") == phase)


def test_worker_killed_during_a_compensation(crashy: Deployment) -> None:
    # Given the only worker is SIGKILLed while it undoes node a
    victim = crashy.start_worker()
    handle = crashy.client().submit(SAGA)
    wait_for(lambda: phase_count(crashy, handle.id, "undo")["a"] >= 1)
    victim.kill()
    # When another worker comes up
    crashy.start_worker()
    status = handle.wait(WAIT)
    # Then the compensation is redelivered and finishes; the run is rolled back, in order
    assert status.status == "rolled_back", status
    assert phase_count(crashy, handle.id, "undo")["a"] == 2
    assert phase_count(crashy, handle.id, "undone") == {"a": 1, "b": 1}
    assert status.nodes["a"].compensated == 1


def test_lost_compensation_publish_is_repaired(crashy: Deployment) -> None:
    # Given a worker that dies after marking a's compensation, before sending it
    victim = crashy.start_worker(DAGWORKER_FAULTS="before_comp_publish:a")
    client = crashy.client()
    handle = client.submit(SAGA)
    victim.proc.wait(timeout=WAIT)
    assert client.store.run(handle.id)["status"] == "rolling_back"
    assert client.store.task(handle.id, "a", 0).get("rb_state") == "queued"
    # When a healthy worker's reconciler finds the stalled launch
    crashy.start_worker()
    status = handle.wait(WAIT)
    # Then a is compensated once and the run ends rolled back
    assert status.status == "rolled_back", status
    assert phase_count(crashy, handle.id, "undone") == {"a": 1, "b": 1}
