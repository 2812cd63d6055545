"""A pipeline (or a run of it) as a self-contained HTML page: an inline SVG drawn here, no script.

The page must open where there is no network (an operator's laptop on a bastion, a CI artefact),
so nothing is fetched: the layout is computed in Python. Nodes are placed in layers by
topological depth (a node sits one layer below its deepest dependency), and each layer is
ordered by the mean position of its dependencies in the layers above, which keeps most edges
short and uncrossed for the shapes pipelines usually have (chains, fan-out/fan-in, diamonds).
The Mermaid source follows the picture in a ``<pre>``, for pasting into a Markdown document.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass

from dagworker.mermaid import STATE_STYLES, to_mermaid
from dagworker.pipeline import FanMode, Node, Pipeline

BOX_W, BOX_H = 190, 66
GAP_X, GAP_Y = 40, 76
MARGIN = 24


def state_colours(state: str) -> dict[str, str]:
    """fill, stroke and colour (and maybe stroke-dasharray) of a state, from Mermaid's styles."""
    style = STATE_STYLES.get(state, STATE_STYLES["pending"])
    pairs = (part.split(":", 1) for part in style.split(","))
    return {k.strip(): v.strip() for k, v in pairs}


def depths(pipeline: Pipeline) -> dict[str, int]:
    """Layer of each node: 0 for roots, else one more than its deepest dependency."""
    deps = {n.slug: n.depends_on for n in pipeline.nodes}
    out: dict[str, int] = {}
    for start in deps:
        stack = [start]
        while stack:  # iterative: a 10,000-node chain must not hit the recursion limit
            slug = stack[-1]
            if slug in out:
                stack.pop()
                continue
            missing = [d for d in deps[slug] if d not in out and d in deps]
            if missing:
                stack.extend(missing)
                continue
            out[slug] = 1 + max((out[d] for d in deps[slug] if d in out), default=-1)
            stack.pop()
    return out


@dataclass(frozen=True)
class Box:
    node: Node
    x: float
    y: float


@dataclass(frozen=True)
class Layout:
    boxes: dict[str, Box]
    #: (dependency, dependant) -> the points its edge passes: out of the dependency's box,
    #: through a free slot in every layer it crosses, into the dependant's box
    routes: dict[tuple[str, str], list[tuple[float, float]]]
    width: float
    height: float


#: Width of the slot an edge takes in a layer it crosses (Sugiyama's "dummy node").
LANE_W = 28


def layout(pipeline: Pipeline) -> Layout:
    """Layered by depth; an edge that skips layers gets a lane in each, so it crosses no box.

    Each layer is ordered by the mean x of what feeds it (barycentre), lanes included.
    """
    depth = depths(pipeline)
    n_layers = 1 + max(depth.values(), default=-1)
    layers: list[list[str]] = [[] for _ in range(n_layers)]
    feeds: dict[str, list[str]] = {}  # item -> the items right above it
    lanes: dict[tuple[str, str], list[str]] = {}
    for node in pipeline.nodes:
        layers[depth[node.slug]].append(node.slug)
    for node in pipeline.nodes:
        feeds[node.slug] = []
        for dep in node.depends_on:
            above = dep
            lanes[(dep, node.slug)] = []
            for d in range(depth[dep] + 1, depth[node.slug]):
                lane = f"\0{dep}\0{node.slug}\0{d}"
                layers[d].append(lane)
                feeds[lane] = [above]
                lanes[(dep, node.slug)].append(lane)
                above = lane
            feeds[node.slug].append(above)
    nodes = {n.slug: n for n in pipeline.nodes}

    def width_of(item: str) -> float:
        return BOX_W if item in nodes else LANE_W

    centre: dict[str, float] = {}
    for layer in layers:
        if layer and feeds.get(layer[0]) is not None:
            # stable sort: ties (and roots) keep the pipeline's order
            layer.sort(
                key=lambda item: (
                    sum(centre[f] for f in feeds[item]) / len(feeds[item])
                    if feeds[item]
                    else float("-inf")
                )
            )
        x = 0.0
        for item in layer:
            centre[item] = x + width_of(item) / 2
            x += width_of(item) + GAP_X
    spans = [sum(width_of(i) for i in layer) + GAP_X * (len(layer) - 1) for layer in layers]
    widest = max(spans, default=0.0)
    for layer, span in zip(layers, spans, strict=True):
        for item in layer:  # centre every layer on the widest one
            centre[item] += MARGIN + (widest - span) / 2
    top = {d: float(MARGIN + d * (BOX_H + GAP_Y)) for d in range(n_layers)}
    boxes = {slug: Box(nodes[slug], centre[slug] - BOX_W / 2, top[depth[slug]]) for slug in nodes}
    routes: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for (dep, slug), via in lanes.items():
        points = [(centre[dep], top[depth[dep]] + BOX_H)]
        for d, lane in enumerate(via, start=depth[dep] + 1):
            points += [(centre[lane], top[d]), (centre[lane], top[d] + BOX_H)]
        points.append((centre[slug], top[depth[slug]]))
        routes[(dep, slug)] = points
    height = MARGIN * 2 + n_layers * BOX_H + max(0, n_layers - 1) * GAP_Y
    return Layout(boxes, routes, widest + 2 * MARGIN, height)


def _path(points: list[tuple[float, float]]) -> str:
    """Smooth S-curves between layers, straight down through the lanes of crossed layers."""
    (x0, y0), rest = points[0], points[1:]
    d = [f"M{x0:.1f},{y0:.1f}"]
    for i, (x, y) in enumerate(rest):
        px, py = points[i]
        if i % 2 == 0:  # across the gap between two layers
            bend = (y - py) / 2
            d.append(f"C{px:.1f},{py + bend:.1f} {x:.1f},{y - bend:.1f} {x:.1f},{y:.1f}")
        else:  # down a lane
            d.append(f"L{x:.1f},{y:.1f}")
    return " ".join(d)


def _edge_label(node: Node, dep: str) -> str:
    edge = node.edge_filters.get(dep)
    if edge is None or not (edge.rules or edge.select):
        return ""
    rules = [
        f"{r.field} {r.op} {r.value!r}" if r.value is not None else f"{r.field} {r.op}"
        for r in edge.rules
    ]
    if edge.select:
        rules.append(f"top {edge.select.limit} by {edge.select.field}")
    text = " and ".join(rules)
    return text if len(text) <= 48 else text[:47] + "…"


def _svg(
    pipeline: Pipeline,
    states: Mapping[str, str] | None,
    counts: Mapping[str, str] | None,
) -> str:
    shape = layout(pipeline)
    boxes = shape.boxes
    width, height = shape.width, shape.height
    esc = html.escape
    out = [
        f'<svg id="graph" role="img" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#57606a"/></marker></defs>',
    ]
    for node in pipeline.nodes:
        for dep in node.depends_on:
            points = shape.routes[(dep, node.slug)]
            out.append(
                f'<path class="edge" data-from="{esc(dep)}" data-to="{esc(node.slug)}" '
                f'd="{_path(points)}" fill="none" stroke="#57606a" stroke-width="1.5" '
                'marker-end="url(#arrow)"/>'
            )
            label = _edge_label(node, dep)
            if label:
                (x1, y1), (x2, y2) = points[0], points[1]
                out.append(
                    f'<text x="{(x1 + x2) / 2:.1f}" y="{(y1 + y2) / 2:.1f}" font-size="11" '
                    f'text-anchor="middle" fill="#57606a">{esc(label)}</text>'
                )
    for slug, box in boxes.items():
        node = box.node
        state = (states or {}).get(slug, "pending") if states is not None else "pending"
        colours = state_colours(state)
        dash = colours.get("stroke-dasharray")
        fan = "" if node.fan_mode is FanMode.SINGLE else f" · {node.fan_mode.value}"
        lines = [node.plugin + fan]
        if states is not None:
            count = (counts or {}).get(slug)
            lines.append(state + (f" · {count} tasks" if count else ""))
        out.append(
            f'<g class="node" data-slug="{esc(slug)}" data-state="{esc(state)}">'
            f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{BOX_W}" height="{BOX_H}" '
            f'rx="{18 if node.passthrough else 6}" fill="{colours["fill"]}" '
            f'stroke="{colours["stroke"]}" stroke-width="2"'
            + (f' stroke-dasharray="{dash}"' if dash else "")
            + "/>"
            f'<text x="{box.x + BOX_W / 2:.1f}" y="{box.y + 20:.1f}" text-anchor="middle" '
            f'font-size="14" font-weight="bold" fill="{colours["color"]}">{esc(slug)}</text>'
        )
        for i, line in enumerate(lines):
            style = ' font-style="italic"' if i == 0 else ""
            out.append(
                f'<text x="{box.x + BOX_W / 2:.1f}" y="{box.y + 38 + 16 * i:.1f}" '
                f'text-anchor="middle" font-size="12"{style} fill="{colours["color"]}">'
                f"{esc(line)}</text>"
            )
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def _legend(states: Mapping[str, str]) -> str:
    items = []
    for state in STATE_STYLES:
        c = state_colours(state)
        n = sum(1 for s in states.values() if s == state)
        items.append(
            f'<li><span class="swatch" style="background:{c["fill"]};border-color:'
            f'{c["stroke"]}"></span>{state} ({n})</li>'
        )
    return '<ul class="legend">' + "".join(items) + "</ul>"


def to_html(
    pipeline: Pipeline,
    states: Mapping[str, str] | None = None,
    counts: Mapping[str, str] | None = None,
    run_id: str | None = None,
    run_status: str | None = None,
) -> str:
    """A standalone page (no script, no external resource) showing the pipeline or run."""
    esc = html.escape
    title = f"{pipeline.name}" + (f" — run {run_id}" if run_id else "")
    head = f"<h1>{esc(title)}</h1>"
    if run_status:
        head += f'<p class="status">run status: <b>{esc(run_status)}</b></p>'
    all_states = {n.slug: (states or {}).get(n.slug, "pending") for n in pipeline.nodes}
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #1f2328; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
.legend {{ list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 14px; }}
.legend li {{ font-size: 13px; }}
.swatch {{ display: inline-block; width: 12px; height: 12px; border: 2px solid;
  margin-right: 4px; vertical-align: middle; }}
pre {{ background: #f6f8fa; padding: 12px; font-size: 12px; overflow: auto; }}
</style>
</head>
<body>
{head}
{_legend(all_states) if states is not None else ""}
{_svg(pipeline, states, counts)}
<h2>Mermaid source</h2>
<pre id="mermaid">{esc(to_mermaid(pipeline, states, counts))}</pre>
</body>
</html>
"""
