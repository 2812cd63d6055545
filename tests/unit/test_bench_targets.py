"""The bench's verdict on issue 7's targets (bench/targets.py): pure logic on given figures."""

from __future__ import annotations

from bench.targets import Figures, report, verdicts


def _by_target(figures: Figures) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in verdicts(figures)}


FLAT = {"wall": [1.6, 1.1, 1.3], "commands": [22.7, 22.1, 22.1], "worker cpu": [1.0, 1.0, 1.0]}


def test_each_target_is_judged_against_its_own_limit() -> None:
    figures = Figures(
        compare={
            "chain": ("chain-200", 1.15, 22.2, 16.1),  # wall within the chain's 1.2
            "fanout": ("fanout-1000-agg", 1.05, 20.1, 31.0),  # wall over 1.0
            "layers": ("layers-20x20", 0.14, 26.1, 45.2),
            "diamonds": ("diamonds-50", 0.67, 27.7, 27.7),  # commands equal: met
        },
        flat={"fan-out": FLAT, "chains": FLAT},
        big_node=100_000,
    )
    rows = _by_target(figures)
    assert rows["wall time chain-200"] == ["1.15x", "<= 1.20x", "met"]
    assert rows["commands/task chain-200"] == ["22.2", "<= 16.1", "MISSED"]
    assert rows["wall time fanout-1000-agg"][-1] == "MISSED"
    assert rows["commands/task fanout-1000-agg"][-1] == "met"
    assert rows["commands/task diamonds-50"][-1] == "met"
    # growth (largest run over smallest) and spread (highest over lowest) are judged apart:
    # 1.3 / 1.6 falls with size, 1.6 / 1.1 is a spread of 1.45
    assert rows["flat chains wall: largest/smallest run"] == ["0.81", "<= 1.30", "met"]
    assert rows["flat chains wall: max/min"] == ["1.45", "<= 1.30", "MISSED"]
    assert rows["flat fan-out commands: max/min"][-1] == "met"
    assert rows["a 100,000-task node completes"][-1] == "met"
    assert "17 met, 4 missed" in report(figures) and "not run" not in report(figures)


def test_a_ratio_just_over_the_limit_is_judged_unrounded() -> None:
    flat = {"wall": [1.0, 1.0], "commands": [1.0, 1.0], "worker cpu": [1.683, 1.294]}
    rows = _by_target(Figures(flat={"fan-out": flat}, big_node=100_000))
    assert rows["flat fan-out worker cpu: max/min"] == ["1.30", "<= 1.30", "MISSED"]


def test_what_did_not_run_or_has_no_figure_is_not_met() -> None:
    flat = {"wall": [0.0, 1.0], "commands": [20.0], "worker cpu": [1.0, 1.1]}
    figures = Figures(compare={"chain": ("chain-50", 0.8, 22.0, 16.0)}, flat={"fan-out": flat})
    rows = _by_target(figures)
    assert rows["wall time fanout"] == ["-", "<= 1.00x", "not run"]
    assert rows["flat chains wall: max/min"][-1] == "not run"
    assert rows["flat fan-out wall: largest/smallest run"] == ["no figure", "<= 1.30", "MISSED"]
    assert rows["flat fan-out commands: max/min"][-1] == "MISSED"  # one size only
    assert rows["a 100,000-task node completes"] == ["0 tasks", "100,000", "MISSED"]
    assert "not run" in report(figures).splitlines()[1]
