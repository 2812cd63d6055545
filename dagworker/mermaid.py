"""Mermaid flowcharts of pipelines, optionally coloured by a run's node states."""

from __future__ import annotations

from collections.abc import Mapping

from dagworker.pipeline import FanMode, Pipeline

STATE_STYLES = {
    "pending": "fill:#eeeeee,stroke:#999999,color:#333333",
    "running": "fill:#cfe8ff,stroke:#1f6feb,color:#0b2a4a",
    "completed": "fill:#d4f7d4,stroke:#2da44e,color:#0b3d17",
    "failed": "fill:#ffd7d5,stroke:#cf222e,color:#5c0b0b",
    "filtered": "fill:#fff3c4,stroke:#bf8700,color:#4d3800",
    "skipped": "fill:#f2f2f2,stroke:#bbbbbb,color:#777777,stroke-dasharray: 4 3",
    "cancelled": "fill:#e9e0ff,stroke:#8250df,color:#2c1466",
    "rolled_back": "fill:#ffe6cc,stroke:#d97706,color:#4a2800",
}


def _label(text: str) -> str:
    return text.replace('"', "'")


def to_mermaid(
    pipeline: Pipeline,
    states: Mapping[str, str] | None = None,
    counts: Mapping[str, str] | None = None,
) -> str:
    lines = ["flowchart TD"]
    for node in pipeline.nodes:
        parts = [node.slug, f"<i>{node.plugin}</i>"]
        if node.fan_mode is not FanMode.SINGLE:
            parts.append(node.fan_mode.value)
        if states is not None:
            parts.append(
                f"{states.get(node.slug, 'pending')}"
                + (f" · {counts[node.slug]}" if counts and node.slug in counts else "")
            )
        shape = ('{{"%s"}}' if node.passthrough else '["%s"]') % _label("<br/>".join(parts))
        lines.append(f"    {node.slug}{shape}")
    for node in pipeline.nodes:
        for dep in node.depends_on:
            edge = node.edge_filters.get(dep)
            if edge is not None and (edge.rules or edge.select):
                rules = [
                    f"{r.field} {r.op} {r.value!r}" if r.value is not None else f"{r.field} {r.op}"
                    for r in edge.rules
                ]
                if edge.select:
                    rules.append(f"top {edge.select.limit} by {edge.select.field}")
                lines.append(f'    {dep} -- "{_label(" and ".join(rules))}" --> {node.slug}')
            else:
                lines.append(f"    {dep} --> {node.slug}")
    if states is not None:
        for state, style in STATE_STYLES.items():
            lines.append(f"    classDef {state} {style}")
        for node in pipeline.nodes:
            lines.append(f"    class {node.slug} {states.get(node.slug, 'pending')}")
    return "\n".join(lines) + "\n"
