"""One pipeline with a node in every state: the graph page's unit tests and its Chromium check."""

from __future__ import annotations

from dagworker.pipeline import Pipeline

PIPELINE = Pipeline.model_validate(
    {
        "name": "media",
        "nodes": [
            {"slug": "fetch", "plugin": "fetch_files"},
            {
                "slug": "video",
                "plugin": "transcode",
                "depends_on": ["fetch"],
                "edge_filters": {"fetch": {"rules": [{"field": "t", "op": "eq", "value": "v"}]}},
            },
            {"slug": "subs", "plugin": "subtitles", "depends_on": ["fetch"]},
            {"slug": "thumbs", "plugin": "thumbnail", "depends_on": ["fetch"]},
            {"slug": "route", "plugin": "pick", "depends_on": ["subs"], "passthrough": True},
            {
                "slug": "merge",
                "plugin": "merge",
                "depends_on": ["video", "route", "thumbs"],
                "fan_mode": "grouped",
            },
            {"slug": "export", "plugin": "export", "depends_on": ["merge"]},
            {"slug": "audit", "plugin": "audit", "depends_on": ["fetch", "export"]},
            {"slug": "notify", "plugin": "notify", "depends_on": ["export"]},
        ],
    }
)
STATES = {
    "fetch": "completed",
    "video": "failed",
    "subs": "completed",
    "thumbs": "running",
    "route": "filtered",
    "merge": "skipped",
    "export": "cancelled",
    "audit": "rolled_back",
    "notify": "pending",
}
COUNTS = {"fetch": "1/1", "video": "0/2", "subs": "3/3", "thumbs": "4/9"}
