"""Routing end to end (DESIGN §4): grouped fan-in, filters, filtered/skipped, passthrough."""

from __future__ import annotations

from collections import Counter

from dagworker import Client
from tests.conftest import Deployment, node

WAIT = 120


def test_scatter_gather_grouped_merge(client: Client, fleet: Deployment) -> None:
    # Given a source of 10 items, two branches over every item, and a grouped merge
    p = {
        "name": "scatter",
        "nodes": [
            node("src", "t_emit", config={"n": 10}),
            node("left", "t_tag", "src", config={"tag": "L"}),
            node("right", "t_tag", "src", config={"tag": "R"}),
            node("merge", "t_merge", "left", "right", fan_mode="grouped"),
        ],
    }
    handle = client.submit(p)
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    # Then the merge ran 10 tasks, each with exactly one result of each branch for one item,
    # in the order the items were produced
    merged = handle.outputs("merge")
    assert status.nodes["merge"].tasks == 10
    assert [m["origin"] for m in merged] == [f"src:0:{k}" for k in range(10)]
    assert all(m["per_dep"] == {"left": ["L"], "right": ["R"]} for m in merged)
    assert [m["items"] for m in merged] == [[str(k)] for k in range(10)]


def test_grouped_with_broadcast_artifacts(client: Client) -> None:
    p = {
        "name": "broadcast",
        "nodes": [
            node("src", "t_emit", config={"n": 3}),
            node("each", "t_tag", "src", config={"tag": "E"}),
            node("summary", "t_sum", "src", fan_mode="aggregate", config={"key": "i"}),
            node("merge", "t_merge", "each", "summary", fan_mode="grouped"),
        ],
    }
    handle = client.submit(p)
    assert handle.wait(WAIT).status == "completed"
    merged = handle.outputs("merge")
    # one task per origin; the aggregate's broadcast artifact reaches every group
    assert len(merged) == 3
    assert all(m["per_dep"] == {"each": ["E"], "summary": [None]} for m in merged)


def test_filters_route_videos_and_subtitles_to_branches(client: Client) -> None:
    p = {
        "name": "media",
        "nodes": [
            node("files", "t_files"),
            node(
                "video",
                "t_tag",
                "files",
                config={"tag": "video"},
                edge_filters={
                    "files": {"rules": [{"field": "file_type", "op": "eq", "value": "video"}]}
                },
            ),
            node(
                "subs",
                "t_tag",
                "files",
                config={"tag": "subs"},
                edge_filters={
                    "files": {
                        "rules": [
                            {"field": "file_type", "op": "eq", "value": "subtitle"},
                            {"field": "meta.lang", "op": "in", "value": ["fr", "de"]},
                        ]
                    }
                },
            ),
            node(
                "biggest",
                "t_names",
                "files",
                fan_mode="aggregate",
                edge_filters={"files": {"select": {"field": "size", "order": "desc", "limit": 2}}},
            ),
        ],
    }
    handle = client.submit(p)
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    assert [o["item"] for o in handle.outputs("video")] == ["intro.mp4", "talk.mp4"]
    assert [o["item"] for o in handle.outputs("subs")] == ["talk.fr.srt"]
    assert handle.outputs("biggest") == [{"names": ["talk.mp4", "intro.mp4"]}]


def test_filtered_branch_does_not_block_downstream(client: Client, fleet: Deployment) -> None:
    # Given a branch whose filter keeps nothing, joined with a branch that has work
    p = {
        "name": "filtered",
        "nodes": [
            node("files", "t_files"),
            node(
                "audio",
                "t_tag",
                "files",
                edge_filters={
                    "files": {"rules": [{"field": "file_type", "op": "eq", "value": "audio"}]}
                },
            ),
            node(
                "images",
                "t_tag",
                "files",
                edge_filters={
                    "files": {"rules": [{"field": "file_type", "op": "eq", "value": "image"}]}
                },
            ),
            node("join", "t_merge", "audio", "images", fan_mode="aggregate"),
            node("after_audio", "t_tag", "audio"),
        ],
    }
    handle = client.submit(p)
    status = handle.wait(WAIT)
    # Then the empty branch is filtered, the join still runs with what it has, and a node
    # whose only input is the filtered branch is itself filtered; the run completes
    assert status.status == "completed", status.error
    assert status.nodes["audio"].state == "filtered" and status.nodes["audio"].tasks == 0
    assert status.nodes["join"].state == "completed"
    assert handle.outputs("join")[0]["per_dep"] == {"audio": [], "images": ["images"]}
    assert status.nodes["after_audio"].state == "filtered"
    assert "audio" not in Counter(c["node"] for c in fleet.calls(handle.id))


def test_passthrough_look_through(client: Client) -> None:
    # Given a passthrough routing node that filters everything out
    p = {
        "name": "passthrough",
        "nodes": [
            node("files", "t_files"),
            node(
                "route",
                "t_tag",
                "files",
                passthrough=True,
                edge_filters={
                    "files": {"rules": [{"field": "file_type", "op": "eq", "value": "nothing"}]}
                },
            ),
            node("names", "t_names", "route", fan_mode="aggregate"),
        ],
    }
    handle = client.submit(p)
    status = handle.wait(WAIT)
    # Then its dependants look through it to the artifacts of its own dependencies
    assert status.status == "completed", status.error
    assert status.nodes["route"].state == "filtered"
    assert handle.outputs("names")[0]["names"] == [
        "intro.mp4",
        "intro.en.srt",
        "talk.mp4",
        "talk.fr.srt",
        "cover.png",
    ]


def test_failed_dependency_skips_descendants_under_continue(client: Client) -> None:
    p = {
        "name": "keepgoing",
        "nodes": [
            node("ok", "t_append"),
            node("bad", "t_fail", on_failure="continue"),
            node("after_bad", "t_append", "bad"),
            node("after_after", "t_append", "after_bad"),
            node("after_ok", "t_append", "ok"),
        ],
    }
    status = client.submit(p).wait(WAIT)
    assert status.status == "failed"
    assert status.nodes["after_bad"].state == "skipped"
    assert status.nodes["after_after"].state == "skipped"
    assert status.nodes["after_ok"].state == "completed"


def test_bindings_with_when_are_decided_once_per_task(client: Client) -> None:
    # Given bindings: a template, a typed value, a conditional and a literal
    p = {
        "name": "bindings",
        "input": {"fmt": {"type": "string"}},
        "nodes": [
            node("files", "t_files"),
            node(
                "media",
                "t_kwargs",
                "files",
                edge_filters={
                    "files": {
                        "rules": [
                            {"field": "file_type", "op": "in", "value": ["video", "subtitle"]}
                        ]
                    }
                },
                bindings={
                    "title": "{files.name | stem | upper | truncate(5)}",
                    "size": "{files.size}",
                    "fmt": "{input.fmt | default(mp4)}",
                    "label": "{run.pipeline}#{task.index}",
                    "big": {"value": "{files.size}", "when": "{files.size | gt(100)}"},
                    "fixed": 3,
                },
            ),
        ],
    }
    handle = client.submit(p)
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    got = [o["kwargs"] for o in handle.outputs("media")]
    assert got[0] == {
        "title": "INTRO",
        "size": 300,
        "fmt": "mp4",
        "label": "bindings#0",
        "big": 300,
        "fixed": 3,
    }
    assert got[1] == {
        "title": "INTRO",
        "size": 4,
        "fmt": "mp4",
        "label": "bindings#1",
        "fixed": 3,
    }  # `when` false: parameter omitted
    assert [g["title"] for g in got] == ["INTRO", "INTRO", "TALK", "TALK."]
    # the decided arguments are persisted with each task
    spec = client.store.task(handle.id, "media", 2)["spec"]
    assert '"title":"TALK"' in spec


def test_binding_failing_on_the_data_fails_that_task(client: Client) -> None:
    p = {
        "name": "badbinding",
        "nodes": [
            node("files", "t_files"),
            node("media", "t_kwargs", "files", bindings={"n": "{files.meta.lang | required}"}),
        ],
    }
    handle = client.submit(p)
    status = handle.wait(WAIT)
    assert status.status == "failed"
    assert status.nodes["media"].completed == 4 and status.nodes["media"].failed == 1
    error = client.store.task(handle.id, "media", 4)["error"]
    assert "node 'media', binding 'n'" in error and "required" in error
