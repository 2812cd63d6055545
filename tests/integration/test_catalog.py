"""Registered pipelines and triggers: real Redis, real workers (issue 8, parts 4 and 6)."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dagworker import Client, PipelineInvalid
from dagworker.cli import EXIT_INVALID, EXIT_NOT_FOUND, EXIT_OK, main
from dagworker.errors import PipelineLoadError, PipelineNotRegistered, VersionConflict
from tests.conftest import Deployment

WAIT = 120


def unique(stem: str) -> str:
    return f"{stem}-{secrets.token_hex(3)}"


def echo(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "nodes": [{"slug": "a", "plugin": "t_echo_input"}], **extra}


def test_register_list_show_and_auto_versions(isolated: Deployment) -> None:
    client = isolated.client()
    # Given a pipeline without an explicit version
    p = echo("ingest")
    # When it is registered, then registered again unchanged, then changed twice
    first = client.register(p)
    again = client.register(p)
    second = client.register({**p, "description": "v2"})
    third = client.register({**p, "description": "v3"})
    # Then versions count up, and the same content is a no-op returning its version
    assert first == ("ingest", "1") and again == ("ingest", "1")
    assert second.version == "2" and third.version == "3"
    (entry,) = client.pipelines()
    assert entry.name == "ingest" and entry.latest == "3"
    assert [v.version for v in entry.versions] == ["1", "2", "3"]
    # And each version is readable, stored with its version set
    assert client.pipeline("ingest").description == "v3"
    assert client.pipeline("ingest@2").description == "v2"
    assert client.pipeline("ingest", version=1).version == 1
    # And going back to the first content makes a new latest version (a revert is a change)
    assert client.register(p).version == "4"


def test_explicit_versions_never_change(isolated: Deployment) -> None:
    client = isolated.client()
    p = echo("billing", version="2024.1")
    assert client.register(p) == ("billing", "2024.1")
    assert client.register(p) == ("billing", "2024.1")  # identical: no-op
    # When different content is registered under the same explicit version
    with pytest.raises(VersionConflict, match=r"'2024\.1' is already registered"):
        client.register({**p, "description": "sneaky edit"})
    # Then the stored version is untouched
    assert client.pipeline("billing@2024.1").description is None
    assert [v.version for v in client.pipelines()[0].versions] == ["2024.1"]


def test_registration_validates_against_loaded_plugins(isolated: Deployment) -> None:
    client = isolated.client()
    bad = {"name": "bad", "nodes": [{"slug": "a", "plugin": "t_no_such_plugin"}]}
    with pytest.raises(PipelineInvalid, match="unknown plugin"):
        client.register(bad)
    assert client.pipelines() == []
    with pytest.raises(PipelineNotRegistered, match="no registered pipeline 'bad'"):
        client.pipeline("bad")


def test_unknown_versions_and_file_path_ambiguity(isolated: Deployment, tmp_path: Path) -> None:
    client = isolated.client()
    client.register(echo("report"))
    with pytest.raises(PipelineNotRegistered, match=r"no version '9' \(registered: 1\)"):
        client.pipeline("report@9")
    # A str given to submit is a file path, always; a registered name gets a hint instead
    with pytest.raises(PipelineLoadError, match=r"submit\(client.pipeline\('report'\)"):
        client.submit("report")
    # And a file of that name is still what submit runs (no guessing between the two)
    path = tmp_path / "report"
    path.write_text(json.dumps(echo("from-file")))
    assert client.validate(str(path)).name == "from-file"


def test_cli_register_list_show_and_refusal(isolated: Deployment, tmp_path: Path) -> None:
    env = isolated.env()
    runner = CliRunner()
    path = tmp_path / "p.json"
    path.write_text(json.dumps(echo("cli-pipe", version=7)))
    out = runner.invoke(main, ["pipelines", "register", str(path), "--json"], env=env)
    assert out.exit_code == EXIT_OK, out.output
    assert json.loads(out.output) == {"name": "cli-pipe", "version": "7", "created": True}
    out = runner.invoke(main, ["pipelines", "register", str(path)], env=env)
    assert out.exit_code == EXIT_OK and "cli-pipe@7 unchanged" in out.output
    listing = runner.invoke(main, ["pipelines", "list", "--json"], env=env)
    assert json.loads(listing.output)[0]["versions"] == ["7"]
    shown = runner.invoke(main, ["pipelines", "show", "cli-pipe", "--version", "7"], env=env)
    assert json.loads(shown.output)["version"] == 7
    # When the content changes under version 7, Then exit 2 with a clear message
    path.write_text(json.dumps(echo("cli-pipe", version=7, description="changed")))
    out = runner.invoke(main, ["pipelines", "register", str(path)], env=env)
    assert out.exit_code == EXIT_INVALID
    assert "version '7' is already registered with different content" in out.output
    missing = runner.invoke(main, ["pipelines", "show", "nope"], env=env)
    assert missing.exit_code == EXIT_NOT_FOUND


def test_run_a_registered_pipeline(fleet: Deployment, tmp_path: Path) -> None:
    client = fleet.client()
    name = unique("registered-run")
    # Given two registered versions
    client.register(echo(name, input={"tag": {"type": "string", "default": "one"}}))
    client.register(echo(name, input={"tag": {"type": "string", "default": "two"}}))
    # When the latest and an older version run (Python API and CLI)
    latest = client.submit(client.pipeline(name))
    out = CliRunner().invoke(
        main, ["run", "--pipeline", f"{name}@1", "--wait", "--json"], env=fleet.env()
    )
    # Then each runs its own version and input defaults
    assert latest.wait(WAIT).status == "completed"
    assert latest.outputs("a")[0]["input"] == {"tag": "two"}
    assert latest.status().pipeline_version == "2"
    assert out.exit_code == EXIT_OK, out.output
    status = json.loads(out.output)
    assert status["input"] == {"tag": "one"}


def test_event_starts_every_subscriber_with_the_payload(fleet: Deployment) -> None:
    client = fleet.client()
    event, other = unique("order.created"), unique("order.deleted")
    schema = {"order": {"type": "integer", "required": True}}
    # Given two pipelines subscribed to the event, one to another event, one to none
    subscribed = [unique("on-order-a"), unique("on-order-b")]
    for name in subscribed:
        client.register(echo(name, input=schema, triggers={"events": [event]}))
    elsewhere = unique("on-delete")
    client.register(echo(elsewhere, input=schema, triggers={"events": [other]}))
    client.register(echo(unique("no-trigger"), input=schema))
    # When the event fires
    started_at = time.monotonic()
    fired = client.fire(event, {"order": 42})
    fire_s = time.monotonic() - started_at
    # Then exactly the two subscribers run, with the payload as their run input
    assert sorted(fired.started) == sorted(subscribed) and fired.refused == {}
    for handle in fired:
        status = handle.wait(WAIT)
        assert status.status == "completed"
        assert status.input == {"order": 42}
        assert handle.outputs("a")[0]["input"] == {"order": 42}
    assert fire_s < 5.0
    started = {s.pipeline for s in client.runs(limit=200)}
    assert elsewhere not in started


def test_a_subscriber_refusing_the_payload_does_not_stop_the_others(fleet: Deployment) -> None:
    client = fleet.client()
    event = unique("signup")
    strict = unique("needs-user")
    loose = unique("takes-any")
    client.register(
        echo(
            strict,
            input={"user": {"type": "string", "required": True}},
            triggers={"events": [event]},
        )
    )
    client.register(echo(loose, triggers={"events": [event]}))
    fired = client.fire(event, {"email": "x@example.org"})
    assert list(fired.started) == [loose]
    assert "input 'user': required" in fired.refused[strict]
    assert fired[0].wait(WAIT).status == "completed"
    # And a new version without the trigger unsubscribes (the index follows the latest version)
    client.register(echo(loose, description="no longer listening"))
    assert list(client.fire(event, {"user": "ann"}).started) == [strict]


def test_cli_fire_exit_codes(fleet: Deployment, tmp_path: Path) -> None:
    client = fleet.client()
    env = fleet.env()
    event = unique("cli.event")
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"n": 3}))
    # no subscriber: exit 3, says so
    out = CliRunner().invoke(main, ["fire", event, "--payload", str(payload)], env=env)
    assert out.exit_code == EXIT_NOT_FOUND
    assert f"no registered pipeline subscribes to event {event!r}" in out.output
    name = unique("cli-sub")
    client.register(echo(name, triggers={"events": [event]}))
    out = CliRunner().invoke(main, ["fire", event, "--payload", str(payload), "--json"], env=env)
    assert out.exit_code == EXIT_OK, out.output
    run_id = json.loads(out.output)["started"][name]
    assert client.get(run_id).wait(WAIT).input == {"n": 3}
    bad = CliRunner().invoke(main, ["fire", "Not An Event"], env=env)
    assert bad.exit_code == EXIT_INVALID


def test_client_without_fleet_still_lists(isolated: Deployment) -> None:
    # A second client (another process, say) sees what the first registered
    Client(settings=isolated.settings).register(echo("shared"))
    assert [e.name for e in isolated.client().pipelines()] == ["shared"]
