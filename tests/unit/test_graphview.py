"""`dagworker graph --html`: a standalone page, every node drawn and coloured by its state."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from dagworker.graphview import depths, layout, state_colours, to_html
from dagworker.mermaid import STATE_STYLES
from tests.graph_sample import COUNTS, PIPELINE, STATES


class Nodes(HTMLParser):
    """Collects the SVG node groups (slug -> state, rect fill) and every URL-bearing attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, dict[str, str]] = {}
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        self.urls += [v for k, v in a.items() if k in ("src", "href", "xlink:href", "action")]
        if tag == "g" and "node" in a.get("class", ""):
            self._current = a["data-slug"]
            self.nodes[a["data-slug"]] = {"state": a["data-state"]}
        elif tag == "rect" and self._current:
            self.nodes[self._current]["fill"] = a["fill"]
            self.nodes[self._current]["stroke"] = a["stroke"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "g":
            self._current = None


def test_depth_layers_follow_the_longest_path() -> None:
    assert depths(PIPELINE) == {
        "fetch": 0, "video": 1, "subs": 1, "thumbs": 1, "route": 2, "merge": 3, "export": 4,
        "audit": 5, "notify": 5,
    }  # fmt: skip
    boxes = layout(PIPELINE).boxes
    # every dependency is drawn above its dependant, and no two boxes overlap
    for node in PIPELINE.nodes:
        assert all(boxes[d].y < boxes[node.slug].y for d in node.depends_on)
    corners = [(round(b.x), round(b.y)) for b in boxes.values()]
    assert len(set(corners)) == len(corners)
    # an edge that skips layers (thumbs -> merge, fetch -> audit) goes round the boxes between
    routes = layout(PIPELINE).routes
    assert len(routes["thumbs", "merge"]) == 4 and len(routes["fetch", "audit"]) == 10
    for (dep, slug), points in routes.items():
        for x, y in points[1:-1]:
            for other in boxes.values():
                inside = other.x <= x <= other.x + 190 and other.y <= y <= other.y + 66
                assert not inside or other.node.slug in (dep, slug), (dep, slug, other.node.slug)


def test_html_draws_every_node_in_its_state_colour_with_counts() -> None:
    page = to_html(PIPELINE, STATES, COUNTS, run_id="r-1", run_status="failed")
    parsed = Nodes()
    parsed.feed(page)
    assert set(parsed.nodes) == {n.slug for n in PIPELINE.nodes}
    for slug, drawn in parsed.nodes.items():
        assert drawn["state"] == STATES[slug]
        colours = state_colours(STATES[slug])
        assert (drawn["fill"], drawn["stroke"]) == (colours["fill"], colours["stroke"])
    # distinct states get distinct fills
    assert len({d["fill"] for d in parsed.nodes.values()}) == len(set(STATES.values()))
    assert "4/9 tasks" in page and "run status: <b>failed</b>" in page
    # one arrow per dependency edge, the filter written on its edge
    assert page.count('class="edge"') == sum(len(n.depends_on) for n in PIPELINE.nodes)
    assert "t eq &#x27;v&#x27;" in page
    # the Mermaid source is included, escaped
    assert '<pre id="mermaid">flowchart TD' in page and "classDef failed" in page


def test_html_is_self_contained() -> None:
    page = to_html(PIPELINE, STATES, COUNTS, run_id="r-1")
    parsed = Nodes()
    parsed.feed(page)
    assert "script" not in parsed.tags and "link" not in parsed.tags and "img" not in parsed.tags
    assert all(u.startswith("#") or u.startswith("url(#") for u in parsed.urls), parsed.urls
    assert not re.search(r"https?://|//cdn|@import", page)


def test_html_without_a_run_draws_the_pipeline_only() -> None:
    page = to_html(PIPELINE)
    parsed = Nodes()
    parsed.feed(page)
    assert {d["state"] for d in parsed.nodes.values()} == {"pending"}
    assert 'class="legend"' not in page and "tasks" not in page
    assert set(STATE_STYLES) >= set(STATES.values())
