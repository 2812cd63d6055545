"""The bench's verdict on issue 7's targets (bench/targets.py): pure logic on given figures."""

from __future__ import annotations

from bench.targets import Figures, ratios, report, verdicts


def _by_target(figures: Figures) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in verdicts(figures)}


def test_each_target_is_judged_against_its_own_limit() -> None:
    figures = Figures(
        compare={
            "chain": ("chain-200", 1.15, 22.2, 16.1),  # wall within the chain's 1.2
            "fanout": ("fanout-1000-agg", 1.05, 20.1, 31.0),  # wall over 1.0
            "diamonds": ("diamonds-50", 0.67, 27.7, 27.7),  # commands equal: met
        },
        flat={"fan-out": {"wall": 0.86, "commands": 1.31}, "chains": {"worker cpu": 0.72}},
        big_node=100_000,
    )
    rows = _by_target(figures)
    assert rows["wall time chain-200"] == ["1.15x", "<= 1.20x", "met"]
    assert rows["commands/task chain-200"] == ["22.2", "<= 16.1", "MISSED"]
    assert rows["wall time fanout-1000-agg"][-1] == "MISSED"
    assert rows["commands/task fanout-1000-agg"][-1] == "met"
    assert rows["commands/task diamonds-50"][-1] == "met"
    assert rows["flat fan-out: wall"][-1] == "met"
    assert rows["flat fan-out: commands"] == ["1.31", "<= 1.30", "MISSED"]
    assert rows["flat chains: worker cpu"][-1] == "met"
    assert rows["a 100,000-task node completes"][-1] == "met"
    assert "4 missed" not in report(figures) and "3 missed" in report(figures)


def test_a_smaller_largest_node_misses_and_unrun_series_are_not_judged() -> None:
    rows = _by_target(Figures(flat={"fan-out": {"wall": 1.0}}, big_node=5_000))
    assert rows["a 100,000-task node completes"] == ["5,000 tasks", "100,000", "MISSED"]
    assert _by_target(Figures()) == {}


def test_ratios_reads_the_largest_over_smallest_row() -> None:
    headers = ["tasks", "wall s", "wall ms/t", "cmd/t", "cpu ms/t"]
    row = ["largest/smallest", "-", "0.86", "0.96", "0.76"]
    assert ratios(headers, row, {"wall ms/t": "wall", "cmd/t": "commands", "wall s": "x"}) == {
        "wall": 0.86,
        "commands": 0.96,
    }
