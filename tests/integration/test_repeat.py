"""``repeat: N`` with real workers (issue 8): N tasks per input, downstream sees them all."""

from __future__ import annotations

from collections import Counter

from dagworker import Client
from tests.conftest import Deployment

WAIT = 60


def test_repeat_runs_n_tasks_per_input_and_downstream_sees_all(
    client: Client, fleet: Deployment
) -> None:
    # Given two items, each solved with 3 seeds, then everything aggregated and grouped
    handle = client.submit(
        {
            "name": "seeds",
            "nodes": [
                {"slug": "src", "plugin": "t_emit", "config": {"n": 2}},
                {"slug": "solve", "plugin": "t_seed", "depends_on": ["src"], "repeat": 3},
                {
                    "slug": "all",
                    "plugin": "t_count",
                    "depends_on": ["solve"],
                    "fan_mode": "aggregate",
                },
                {
                    "slug": "best",
                    "plugin": "t_merge",
                    "depends_on": ["solve"],
                    "fan_mode": "grouped",
                },
            ],
        }
    )
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    # Then solve had 6 tasks: repeat indices 0..2 for each item, each item's repeats adjacent
    assert status.nodes["solve"].tasks == 6
    solved = handle.outputs("solve")
    assert [(a["item"], a["seed"]) for a in solved] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    calls = Counter(c["repeat"] for c in fleet.calls(handle.id) if c["node"] == "solve")
    assert calls == {0: 2, 1: 2, 2: 2}
    # the aggregate saw all six; grouped by origin, each item's three repeats stay together
    assert [a["count"] for a in handle.outputs("all")] == [6]
    assert [sorted(g["items"]) for g in handle.outputs("best")] == [["0"], ["1"]]


def test_repeat_on_a_root_node(client: Client) -> None:
    handle = client.submit(
        {"name": "root-repeat", "nodes": [{"slug": "a", "plugin": "t_seed", "repeat": 4}]}
    )
    assert handle.wait(WAIT).status == "completed"
    assert sorted(a["seed"] for a in handle.outputs("a")) == [0, 1, 2, 3]
