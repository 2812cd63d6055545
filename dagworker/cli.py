"""The ``dagworker`` command line.

Exit codes (documented in the README):
  0  the run completed / the command succeeded
  1  the run ended failed, cancelled, rolled back or rollback_failed
  2  invalid input: a pipeline that fails validation, a bad --input, a bad file
  3  not found: no such run, no such registered pipeline or version, no subscriber to an event
  4  timed out waiting (the run goes on)
  5  Redis (or the broker) cannot be reached
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import redis
from rich.console import Console

from dagworker.client import Client
from dagworker.errors import (
    ConfigError,
    DagworkerError,
    IllegalTransition,
    PipelineError,
    PipelineNotRegistered,
    PluginError,
    RunNotFound,
    RunRefused,
    RunTimeout,
)
from dagworker.graphview import to_html
from dagworker.mermaid import to_mermaid
from dagworker.pipeline import Pipeline, parse_document, read_pipeline_file
from dagworker.plugin import registry
from dagworker.progress import follow, render_status, render_tasks
from dagworker.states import RunState
from dagworker.status import RunStatus

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_TIMEOUT, EXIT_UNREACHABLE = range(6)

console = Console()
err_console = Console(stderr=True)


def _exit(code: int, message: str | None = None) -> NoReturn:
    if message:
        err_console.print(message, style="red" if code else None, highlight=False, markup=False)
    sys.exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Map errors to exit codes with a one-paragraph message, never a traceback."""
    try:
        yield
    except (RunNotFound, PipelineNotRegistered) as exc:
        _exit(EXIT_NOT_FOUND, str(exc))
    except RunTimeout as exc:
        _exit(EXIT_TIMEOUT, str(exc))
    except (PipelineError, PluginError, ConfigError, RunRefused) as exc:
        _exit(EXIT_INVALID, str(exc))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        _exit(EXIT_UNREACHABLE, f"cannot reach Redis: {exc} (check DAGWORKER_REDIS_URL)")
    except DagworkerError as exc:
        _exit(EXIT_FAILED, str(exc))


def _client(redis_url: str | None) -> Client:
    return Client(redis_url)


def exit_code_for(status: str) -> int:
    return EXIT_OK if status == RunState.COMPLETED.value else EXIT_FAILED


def parse_inputs(pairs: tuple[str, ...], input_file: str | None) -> dict[str, Any]:
    """``--input-file`` (JSON/YAML, typed) then ``--input k=v`` (strings) on top."""
    values: dict[str, Any] = {}
    if input_file:
        text = Path(input_file).read_text(encoding="utf-8")
        values.update(parse_document(text, input_file))
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--input")
        values[key] = value
    return values


redis_option = click.option(
    "--redis-url",
    envvar="DAGWORKER_REDIS_URL",
    default=None,
    help="Redis URL (default: $DAGWORKER_REDIS_URL or local).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dagworker")
def main() -> None:
    """dagworker: durable DAG pipelines on Celery workers and Redis."""


@main.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False))
def validate(pipeline_file: str) -> None:
    """Check a pipeline file; print every problem (exit 2) or a summary (exit 0)."""
    with _errors():
        client = Client(load_plugins=True)
        pipeline = client.validate(pipeline_file)
        console.print(
            f"[green]ok[/green] {pipeline.name}: {len(pipeline.nodes)} node(s), "
            f"plugins {', '.join(sorted({n.plugin for n in pipeline.nodes}))}"
        )


@main.command()
@click.argument("pipeline_file", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--pipeline",
    "registered",
    metavar="NAME[@VERSION]",
    help="Run a registered pipeline (the latest version unless @VERSION) instead of a file.",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Run input value (a string); repeatable.",
)
@click.option(
    "--input-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Run input as a JSON or YAML object (typed values).",
)
@click.option("--wait/--no-wait", default=False, help="Follow the run until it ends.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after N s.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--no-cache", is_flag=True, help="Run plugins even where a node's cache has a hit.")
@redis_option
def run(
    pipeline_file: str | None,
    registered: str | None,
    inputs: tuple[str, ...],
    input_file: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
    no_cache: bool,
    redis_url: str | None,
) -> None:
    """Validate and start a run of PIPELINE_FILE (or of a registered --pipeline)."""
    if (pipeline_file is None) == (registered is None):
        raise click.UsageError("give a PIPELINE_FILE or --pipeline NAME[@VERSION] (one of them)")
    with _errors():
        client = _client(redis_url)
        values = parse_inputs(inputs, input_file)
        source = client.pipeline(registered) if registered else pipeline_file
        assert source is not None
        handle = client.submit(source, values, no_cache=no_cache)
        if not wait:
            if as_json:
                console.print_json(json.dumps({"run_id": handle.id}))
            else:
                console.print(handle.id, highlight=False)
            return
        if as_json:
            status = handle.wait(timeout)
            click.echo(status.to_json())
        else:
            status = follow(handle.status, console, timeout=timeout)
            if not RunState(status.status).terminal:
                raise RunTimeout(f"run {handle.id} still {status.status} after {timeout}s")
        sys.exit(exit_code_for(status.status))


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--watch", is_flag=True, help="Refresh until the run ends.")
@click.option("--node", "node", default=None, help="List every task of this node with attempts.")
@click.option("--limit", type=int, default=200, show_default=True, help="With --node.")
@redis_option
def status(
    run_id: str, as_json: bool, watch: bool, node: str | None, limit: int, redis_url: str | None
) -> None:
    """Show a run: its state, per node the state and task counts, the attempts of failed or
    retried tasks and the run's transitions."""
    with _errors():
        handle = _client(redis_url).get(run_id)
        if node is not None:
            tasks = handle.tasks(node, limit)
            if as_json:
                click.echo(json.dumps([t.model_dump() for t in tasks], indent=2))
            else:
                console.print(render_tasks(node, tasks))
            return
        current: RunStatus
        if watch and not as_json:
            current = follow(handle.status, console)
        else:
            current = handle.status(history=True)
            if as_json:
                click.echo(current.to_json())
            else:
                console.print(render_status(current))
        sys.exit(exit_code_for(current.status) if RunState(current.status).terminal else 0)


def _control(action: str, run_id: str, redis_url: str | None) -> None:
    with _errors():
        handle = _client(redis_url).get(run_id)
        try:
            changed = getattr(handle, action)()
        except IllegalTransition as exc:
            _exit(EXIT_INVALID, str(exc))
        state = handle.state().value
        console.print(f"{run_id}: {state}" + ("" if changed else " (unchanged)"), highlight=False)


@main.command()
@click.argument("run_id")
@redis_option
def cancel(run_id: str, redis_url: str | None) -> None:
    """Cancel a run: nothing new starts, running tasks finish and are recorded."""
    _control("cancel", run_id, redis_url)


@main.command()
@click.argument("run_id")
@redis_option
def pause(run_id: str, redis_url: str | None) -> None:
    """Pause a run: no new nodes start until resume."""
    _control("pause", run_id, redis_url)


@main.command()
@click.argument("run_id")
@redis_option
def resume(run_id: str, redis_url: str | None) -> None:
    """Resume a paused run."""
    _control("resume", run_id, redis_url)


def _follow_or_print(client: Client, run_id: str, wait: bool, timeout: float | None) -> None:
    """After a control command: print the state, or follow the run to its end (exit code)."""
    handle = client.get(run_id)
    if not wait:
        console.print(f"{run_id}: {handle.state().value}", highlight=False)
        return
    status = follow(handle.status, console, timeout=timeout)
    if not RunState(status.status).terminal:
        raise RunTimeout(f"run {run_id} still {status.status} after {timeout}s")
    sys.exit(exit_code_for(status.status))


wait_option = click.option("--wait", is_flag=True, help="Follow the run until it ends.")
timeout_option = click.option("--timeout", type=float, default=None, help="With --wait: N s.")


@main.command()
@click.argument("run_id")
@wait_option
@timeout_option
@redis_option
def rollback(run_id: str, wait: bool, timeout: float | None, redis_url: str | None) -> None:
    """Undo a run's completed work (reverse dependency order), or resume a failed rollback."""
    with _errors():
        client = _client(redis_url)
        changed = client.get(run_id).rollback()
        if not changed:
            console.print(f"{run_id}: already rolling back or rolled back", highlight=False)
        _follow_or_print(client, run_id, wait, timeout)


@main.command()
@click.argument("run_id")
@click.option("--input", "inputs", multiple=True, metavar="KEY=VALUE", help="New input value.")
@click.option("--input-file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--on-change",
    type=click.Choice(["reuse", "raise", "reset"]),
    default="raise",
    show_default=True,
    help="When the new input differs: keep completed work, refuse, or redo everything.",
)
@wait_option
@timeout_option
@redis_option
def retry(
    run_id: str,
    inputs: tuple[str, ...],
    input_file: str | None,
    on_change: str,
    wait: bool,
    timeout: float | None,
    redis_url: str | None,
) -> None:
    """Restart a failed or cancelled run (same id), reusing its completed work."""
    with _errors():
        client = _client(redis_url)
        handle = client.get(run_id)
        new_input = None
        if inputs or input_file:
            new_input = {**handle.status().input, **parse_inputs(inputs, input_file)}
        handle.retry(new_input, on_change)
        _follow_or_print(client, run_id, wait, timeout)


@main.command()
@click.argument("run_id")
@click.option("--nodes", required=True, help="Comma-separated nodes to run again.")
@wait_option
@timeout_option
@redis_option
def replay(
    run_id: str, nodes: str, wait: bool, timeout: float | None, redis_url: str | None
) -> None:
    """Start a new run reusing RUN_ID's outputs except NODES and their descendants."""
    with _errors():
        client = _client(redis_url)
        new = client.get(run_id).replay([n.strip() for n in nodes.split(",") if n.strip()])
        click.echo(new.id)
        if wait:
            _follow_or_print(client, new.id, wait, timeout)


@main.command()
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@redis_option
def runs(limit: int, as_json: bool, redis_url: str | None) -> None:
    """List recent runs, newest first."""
    with _errors():
        items = _client(redis_url).runs(limit)
        if as_json:
            click.echo(
                json.dumps(
                    [json.loads(s.model_dump_json(exclude={"nodes"})) for s in items], indent=2
                )
            )
            return
        for s in items:
            took = f"{s.duration:.1f}s" if s.duration is not None else "-"
            console.print(
                f"{s.run_id}  {s.pipeline:<20} {s.status:<16} {took:>8}  "
                f"tasks {s.tasks_done}/{s.tasks_total}",
                highlight=False,
            )


@main.command()
@click.option(
    "--older-than",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds since a run ended (default: $DAGWORKER_RESULT_TTL).",
)
@redis_option
def prune(older_than: float | None, redis_url: str | None) -> None:
    """Delete finished runs that ended long enough ago, every key of them.

    The workers do the same at the end of every reconciler pass (DAGWORKER_RESULT_TTL); this
    is for a fleet that is stopped, or a shorter retention now. A run running again is kept,
    one with tasks in flight is kept one period more, a child run goes with its parent.
    """
    with _errors():
        deleted = _client(redis_url).prune(older_than)
        click.echo(f"deleted {deleted} finished run(s)")


@main.command()
@click.argument("pipeline_file", required=False, type=click.Path(dir_okay=False))
@click.option("--run", "run_id", help="Colour nodes by the states of this run.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write a self-contained HTML page (inline SVG, works offline) to this file.",
)
@redis_option
def graph(
    pipeline_file: str | None, run_id: str | None, html_file: str | None, redis_url: str | None
) -> None:
    """Print a pipeline (or a run's pipeline) as a Mermaid flowchart."""
    with _errors():
        states: dict[str, str] | None = None
        counts: dict[str, str] | None = None
        status: str | None = None
        if run_id:
            client = _client(redis_url)
            pipeline = Pipeline.model_validate_json(client.store.pipeline_json(run_id))
            st = client.get(run_id).status()
            states = {s: n.state for s, n in st.nodes.items()}
            counts = {s: f"{n.completed}/{n.tasks}" for s, n in st.nodes.items()}
            status = st.status
        elif pipeline_file:
            pipeline = Pipeline.model_validate(read_pipeline_file(pipeline_file))
        else:
            raise click.UsageError("give a PIPELINE_FILE or --run RUN_ID")
        if html_file:
            page = to_html(pipeline, states, counts, run_id=run_id, run_status=status)
            Path(html_file).write_text(page, encoding="utf-8")
            err_console.print(f"wrote {html_file}", highlight=False)
        click.echo(to_mermaid(pipeline, states, counts), nl=False)


@main.command()
@click.option("--port", type=int, default=9808, show_default=True)
@click.option("--address", default="0.0.0.0", show_default=True, help="Interface to listen on.")
@redis_option
def metrics(port: int, address: str, redis_url: str | None) -> None:
    """Serve the fleet's metrics for Prometheus on http://ADDRESS:PORT/metrics."""
    from dagworker.metrics import make_server

    with _errors():
        client = _client(redis_url)
        client.store.r.ping()
        server = make_server(client.store.r, client.store.keys.prefix, address, port)
        err_console.print(
            f"dagworker metrics for prefix {client.store.keys.prefix!r} on "
            f"http://{address}:{server.server_address[1]}/metrics",
            highlight=False,
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


@main.command()
@click.option("--json", "as_json", is_flag=True)
def plugins(as_json: bool) -> None:
    """List registered plugins (from DAGWORKER_PLUGINS and entry points)."""
    with _errors():
        from dagworker.settings import Settings
        from dagworker.worker import load_plugins

        load_plugins(Settings.from_env())
        rows: list[dict[str, Any]] = [
            {
                "name": p.name,
                "parameters": [prm.name + ("" if prm.required else "?") for prm in p.parameters],
                "module": p.func.__module__,
                "queue": p.queue,
                "rollback": p.rollback_func is not None,
                "description": p.description,
            }
            for p in registry.all()
        ]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        for row in rows:
            console.print(
                f"[bold]{row['name']}[/bold]({', '.join(row['parameters'])})  "
                f"[dim]{row['module']}[/dim]  {row['description']}",
                highlight=False,
            )


@main.command()
@click.option("--keep-worker", is_flag=True, help="Leave the worker running afterwards.")
def demo(keep_worker: bool) -> None:
    """Run the demo pipeline on a local worker (embedded Redis if none answers)."""
    from dagworker.demo import run_demo

    with _errors():
        sys.exit(run_demo(console, keep_worker=keep_worker))


# -- registered pipelines, triggers, schedules -------------------------------------------------


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@main.group()
def pipelines() -> None:
    """Registered pipelines: stored versions that `run --pipeline`, events and schedules use."""


@pipelines.command("register")
@click.argument("pipeline_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@redis_option
def pipelines_register(pipeline_file: str, as_json: bool, redis_url: str | None) -> None:
    """Validate PIPELINE_FILE against the loaded plugins and store it as a version.

    The same content again is a no-op; different content under an existing explicit
    version is refused (exit 2)."""
    with _errors():
        client = _client(redis_url)
        registration, created = client.catalog.register(client.validate(pipeline_file))
        name, version = registration
        if as_json:
            click.echo(json.dumps({"name": name, "version": version, "created": created}))
            return
        what = "registered" if created else "unchanged"
        console.print(f"{name}@{version} {what}", highlight=False)


@pipelines.command("list")
@click.option("--json", "as_json", is_flag=True)
@redis_option
def pipelines_list(as_json: bool, redis_url: str | None) -> None:
    """Registered pipelines: name, versions (registration order), latest."""
    with _errors():
        entries = _client(redis_url).pipelines()
        if as_json:
            rows = [
                {
                    "name": e.name,
                    "latest": e.latest,
                    "versions": [v.version for v in e.versions],
                    "events": e.events,
                    "scheduled": e.scheduled,
                }
                for e in entries
            ]
            click.echo(json.dumps(rows, indent=2))
            return
        for e in entries:
            extra = f"  events {','.join(e.events)}" if e.events else ""
            extra += "  scheduled" if e.scheduled else ""
            console.print(
                f"{e.name:<24} latest {e.latest:<8} versions "
                f"{','.join(v.version for v in e.versions)}{extra}",
                highlight=False,
            )


@pipelines.command("show")
@click.argument("name")
@click.option("--version", "version", default=None, help="A version (default: the latest).")
@redis_option
def pipelines_show(name: str, version: str | None, redis_url: str | None) -> None:
    """Print a registered pipeline (NAME or NAME@VERSION) as JSON."""
    with _errors():
        pipeline = _client(redis_url).pipeline(name, version)
        click.echo(json.dumps(pipeline.model_dump(mode="json", exclude_defaults=True), indent=2))


@main.command()
@click.argument("event")
@click.option(
    "--payload",
    "payload_file",
    type=click.Path(exists=True, dir_okay=False),
    help="The run input of every started run: a JSON (or YAML) object.",
)
@click.option("--json", "as_json", is_flag=True)
@redis_option
def fire(event: str, payload_file: str | None, as_json: bool, redis_url: str | None) -> None:
    """Start every registered pipeline subscribed to EVENT (its latest version).

    Exit 0 when every subscriber started, 2 when some refused the payload (the others still
    started), 3 when no pipeline subscribes to EVENT."""
    with _errors():
        payload = parse_inputs((), payload_file)
        fired = _client(redis_url).fire(event, payload)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "event": event,
                        "started": {name: h.id for name, h in fired.started.items()},
                        "refused": fired.refused,
                    },
                    indent=2,
                )
            )
        else:
            for name, handle in fired.started.items():
                console.print(f"{name}: {handle.id}", highlight=False)
            for name, why in fired.refused.items():
                err_console.print(f"{name}: refused: {why}", highlight=False, markup=False)
        if not fired.started and not fired.refused:
            _exit(EXIT_NOT_FOUND, f"no registered pipeline subscribes to event {event!r}")
        sys.exit(EXIT_INVALID if fired.refused else EXIT_OK)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@redis_option
def schedules(as_json: bool, redis_url: str | None) -> None:
    """Scheduled pipelines with their next fire time (fired by `celery -A dagworker beat`)."""
    from dagworker.schedules import Scheduler

    with _errors():
        client = _client(redis_url)
        items = Scheduler(client.store).schedules()
        if as_json:
            rows = [
                {
                    "name": s.name,
                    "version": s.version,
                    "schedule": s.schedule.model_dump(mode="json"),
                    "next_at": s.next_at,
                    "last_run": s.last_run,
                    "last_fired_at": s.last_fired_at,
                    "fires": s.fires,
                    "skipped": s.skipped,
                    "queued": s.queued,
                    "last_error": s.last_error,
                }
                for s in items
            ]
            click.echo(json.dumps(rows, indent=2))
            return
        for s in items:
            spec = s.schedule
            when = f"cron {spec.cron}" if spec.cron else f"every {spec.every_s:g}s"
            console.print(
                f"{s.name}@{s.version:<6} {when:<22} overlap {spec.overlap.value:<5} "
                f"next {_when(s.next_at)}  last {s.last_run or '-'}  "
                f"fires {s.fires} skipped {s.skipped}" + ("  queued" if s.queued else ""),
                highlight=False,
            )
            if s.last_error:
                err_console.print(f"  last error: {s.last_error}", highlight=False, markup=False)
