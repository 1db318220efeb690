"""The only entry point: `playbook-bot dev|worker|serve|run|status|cancel|approve|reject|confirm|validate|schema|schedules`.

With PLAYBOOK_BOT_API_URL set, `run`, `status`, `cancel`, `approve`, `reject` and `confirm` go through the front
door's API as the token's principal (bot/api/client.py); otherwise straight to Temporal.
Every refusal or failure is one line on stderr and a non-zero exit. The process leaves through
`os._exit` after flushing, because temporalio can crash in interpreter teardown after a worker
ran (sdk-python#300): a command must never print success and then die with 134/139.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable, NoReturn, Optional, TypeVar

import click
import typer
from rich.console import Console
from rich.live import Live

from bot import eventloop, logging as bot_logging
from bot.api.client import ApiClient, ApiClientError
from bot.audit.cli import app as audit_app
from bot.console import progress_lines, schedules_table, status_table
from bot.devstack import DevServerError
from bot.engine.runs import (
    RunError, cancel_run, check_start, confirm as confirm_step, get_status, new_run_id, start_run, vote,
)
from bot.engine.state import ANSWER_MAX, ConfirmRequest, RunStatus, TriggerContext, VoteRequest
from bot.identity import principals
from bot.identity.cli import app as token_app
from bot.identity.keys import cli_keyring
from bot.identity.principals import Actor, PrincipalError
from bot.identity.proofs import Keyring
from bot.playbook.loader import Catalog, PlaybookError, PlaybookLoadErrors, load_directory
from bot.playbook.params import ParamError, coerce_params, parse_assignments
from bot.playbook.schema import playbook_json_schema
from bot.policy.cli import app as policy_app
from bot.policy.engine import make_engine
from bot.policy.errors import PolicyLoadError
from bot.settings import ConfigError, Settings, load_settings
from bot.temporal import TemporalUnavailable, connect, shutdown_tracing

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Incident-response playbooks on Temporal.")
app.add_typer(policy_app, name="policy", help="Test and evaluate the Rego policies.")
app.add_typer(audit_app, name="audit", help="Export, verify and follow the audit trail.")
app.add_typer(token_app, name="token", help="Issue, list and revoke the HTTP API's bearer tokens.")
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

POLL_SECONDS = 0.5
KNOWN_ERRORS: tuple[type[BaseException], ...] = (
    RunError,
    TemporalUnavailable,
    PlaybookError,
    ParamError,
    DevServerError,
    PolicyLoadError,
    ConfigError,
    LookupError,
    PrincipalError,
    ApiClientError,
)


class Failure(click.ClickException):
    """One line on stderr, exit 1 (2 for usage errors)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = code

    def show(self, file: Any = None) -> None:
        print(f"error: {self.message}", file=sys.stderr)


def _settings(service: bool = False) -> Settings:
    """Services log at the configured level; one-shot commands only say what went wrong."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise Failure(str(exc)) from None
    level = settings.log_level if service or "PLAYBOOK_BOT_LOG_LEVEL" in os.environ else "WARNING"
    bot_logging.configure(level, settings.log_format)
    return settings


def _reason(exc: BaseException) -> str:
    """The operator's line. Only a bare KeyError needs unquoting (its str() is the key's repr);
    stripping quotes off every message cut the closing quote of `got 'foo'`."""
    if isinstance(exc, KeyError) and type(exc).__str__ is KeyError.__str__ and exc.args:
        return str(exc.args[0]).strip()
    return str(exc).strip()


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run async work; known errors become one line, the rest a traceback (a bug)."""
    try:
        return eventloop.run(coro_fn())
    except KNOWN_ERRORS as exc:
        raise Failure(_reason(exc)) from None


def _catalog(settings: Settings) -> Catalog:
    """The playbooks that load; a broken file elsewhere is a warning, not a block on this run."""
    try:
        return load_directory(settings.playbooks_dir)
    except PlaybookLoadErrors as exc:
        err.print(f"warning: some playbooks do not load:\n{exc}", highlight=False, markup=False)
        return exc.catalog


def _actor(settings: Settings, by: str | None) -> tuple[Actor, Keyring]:
    """`--by WHO` is `cli:WHO`. Verified only on the embedded dev stack, where this CLI holds the
    key `dev` left in the data dir; against any other Temporal it acts unverified (break-glass),
    and the shipped policy refuses unverified approvers and cancellers in production."""
    principal = principals.cli(by)
    keyring = cli_keyring(settings)
    return Actor(principal, principal[4:], (), "dev" if keyring.can_sign else None), keyring


def _api(settings: Settings, by: str | None = None) -> ApiClient | None:
    """The API client when PLAYBOOK_BOT_API_URL is set. Through it the CLI is its token's
    principal, so `--by` (claiming someone else) is refused rather than ignored."""
    if not settings.api_url:
        return None
    if by is not None:
        raise Failure(
            "--by cannot be used through the API (PLAYBOOK_BOT_API_URL is set): you act as your API token's principal"
        )
    try:
        return ApiClient.from_settings(settings)
    except ConfigError as exc:
        raise Failure(str(exc)) from None


def _print_status(status: RunStatus, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status.model_dump(mode="json"), indent=2))
    else:
        out.print(status_table(status))


# ---- long-running --------------------------------------------------------------------------


@app.command()
def dev() -> None:
    """Embedded stack in the foreground: Temporal dev server, worker and HTTP front door."""
    settings = _settings(service=True)
    from bot.services import run_dev

    _run(lambda: run_dev(settings, announce=lambda line: err.print(line, highlight=False)))


@app.command()
def worker() -> None:
    """Run a worker against PLAYBOOK_BOT_TEMPORAL_ADDRESS (or the recorded dev server)."""
    settings = _settings(service=True)
    from bot.worker_service import run_worker_only

    _run(lambda: run_worker_only(settings))


@app.command()
def serve() -> None:
    """Run the HTTP front door only (Alertmanager, Slack, the API, health)."""
    settings = _settings(service=True)
    from bot.services import run_serve

    _run(lambda: run_serve(settings))


# ---- runs ----------------------------------------------------------------------------------


@app.command()
def run(
    name: str = typer.Argument(..., help="Playbook name."),
    param: list[str] = typer.Option([], "--param", "-p", help="key=value, repeatable."),
    by: Optional[str] = typer.Option(None, "--by", help="Requester user id (default cli:<os user>)."),
    wait: bool = typer.Option(False, "--wait", help="Follow progress; exit 0 only if the run completes."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan (arguments, undos, policy) and run nothing."),
) -> None:
    """Start a playbook run and print its run id."""
    settings = _settings()
    if dry_run:
        _dry_run(settings, name, param, by)
    api = _api(settings, by)
    if api is not None:
        _run_via_api(api, name, param, wait, as_json)
    try:
        loaded = _catalog(settings).get(name)
        params = coerce_params(loaded.playbook, parse_assignments(param))
    except KNOWN_ERRORS as exc:
        raise Failure(_reason(exc)) from None
    try:
        actor, keyring = _actor(settings, by)
    except KNOWN_ERRORS as exc:
        raise Failure(_reason(exc)) from None
    trigger = TriggerContext(kind="cli", requested_by=actor.principal)

    run_id = new_run_id(loaded.playbook.name)

    async def go() -> RunStatus | None:
        client = await connect(settings)
        policy = make_engine(settings)
        try:
            await policy.load()
            asked = await check_start(policy, loaded, params, trigger, actor, run_id)
        finally:
            await policy.close()
        handle = await start_run(client, settings.task_queue, loaded, params, trigger, actor=actor, keyring=keyring,
                                 run_id=run_id, asked=asked)
        return await _started(handle.id, partial(get_status, client), wait, as_json)

    _exit_with(_run(go), as_json)


def _dry_run(settings: Settings, name: str, param: list[str], by: str | None) -> NoReturn:
    """The plan of a run with these params; nothing starts and Temporal is not asked."""
    from bot.rehearse.plan import plan_lines

    try:
        loaded = _catalog(settings).get(name)
        params = coerce_params(loaded.playbook, parse_assignments(param))
        principal = principals.cli(by)
    except KNOWN_ERRORS as exc:
        raise Failure(_reason(exc)) from None

    async def go() -> list[str]:
        policy = make_engine(settings)
        try:
            await policy.load()
            return await plan_lines(loaded, params, principal, policy.decide)
        finally:
            await policy.close()

    print("\n".join(_run(go)))
    raise typer.Exit(0)


def _run_via_api(api: ApiClient, name: str, param: list[str], wait: bool, as_json: bool) -> NoReturn:
    """`run` through the front door: it types and checks the params against its own playbooks."""
    try:
        raw = parse_assignments(param)
    except KNOWN_ERRORS as exc:
        raise Failure(_reason(exc)) from None

    async def go() -> RunStatus | None:
        async with api:
            return await _started(await api.start(name, raw), api.status, wait, as_json)

    _exit_with(_run(go), as_json)


async def _started(
    run_id: str, read: Callable[[str], Awaitable[RunStatus]], wait: bool, as_json: bool
) -> RunStatus | None:
    if not wait:
        print(json.dumps({"run_id": run_id}) if as_json else run_id)
        return None
    if not as_json:
        err.print(f"run {run_id} started", highlight=False)
    return await _follow(read, run_id, as_json)


def _exit_with(status: RunStatus | None, as_json: bool) -> NoReturn:
    """`run`'s exit: 0 once started (no --wait), else the final status and 0 only if it completed."""
    if status is None:
        raise typer.Exit(0)
    _print_status(status, as_json)
    raise typer.Exit(0 if status.state == "completed" else 1)


async def _follow(read: Callable[[str], Awaitable[RunStatus]], run_id: str, quiet: bool) -> RunStatus:
    """Poll the run until it ends; a live table on a terminal, one line per change elsewhere."""
    previous: RunStatus | None = None
    live = Live(console=err, auto_refresh=False, transient=True) if err.is_terminal and not quiet else None
    if live:
        live.start()
    try:
        while True:
            status = await read(run_id)
            if live:
                live.update(status_table(status), refresh=True)
            elif not quiet:
                for line in progress_lines(previous, status):
                    err.print(line, highlight=False, markup=False)  # (a step error is a target's words)
            previous = status
            if status.finished:
                return status
            await asyncio.sleep(POLL_SECONDS)
    finally:
        if live:
            live.stop()


@app.command()
def status(
    run_id: str = typer.Argument(..., help="Run id (the Temporal workflow id)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show a run's state and its steps."""
    settings = _settings()
    api = _api(settings)

    async def go() -> RunStatus:
        if api is not None:
            async with api:
                return await api.status(run_id)
        return await get_status(await connect(settings), run_id)

    _print_status(_run(go), as_json)


@app.command()
def cancel(
    run_id: str = typer.Argument(...),
    by: Optional[str] = typer.Option(None, "--by", help="Who cancels (default cli:<os user>)."),
    reason: str = typer.Option("", "--reason"),
) -> None:
    """Cancel a run: the `cancel` rule decides; the running step stops and completed steps are compensated."""
    settings = _settings()
    api = _api(settings, by)

    async def go() -> tuple[str, str]:
        if api is not None:
            async with api:
                answer = await api.cancel(run_id, reason)
            return str(answer.get("message", "")), str(answer.get("was", "?"))
        actor, keyring = _actor(settings, by)
        before, result = await cancel_run(await connect(settings), run_id, actor, keyring, reason)
        return result.message, before.state

    message, was = _run(go)
    print(f"{message} (run {run_id} was {was})")


def _vote(run_id: str, step_id: str, by: str | None, reason: str, verdict: str) -> None:
    settings = _settings()
    api = _api(settings, by)

    async def go() -> Any:
        if api is not None:
            async with api:
                return await api.vote(run_id, step_id, verdict, reason)
        actor, keyring = _actor(settings, by)
        request = VoteRequest(step_id=step_id, user=actor.principal, vote=verdict, reason=reason)  # type: ignore[arg-type]
        return await vote(await connect(settings), run_id, request, actor, keyring)

    print(_run(go).message)


@app.command()
def approve(
    run_id: str = typer.Argument(...),
    step_id: str = typer.Argument(...),
    by: Optional[str] = typer.Option(None, "--by", help="Approver user id (default cli:<os user>)."),
    reason: str = typer.Option("", "--reason"),
) -> None:
    """Approve a step waiting for approval (the break-glass path when Slack is down)."""
    _vote(run_id, step_id, by, reason, "approve")


@app.command()
def reject(
    run_id: str = typer.Argument(...),
    step_id: str = typer.Argument(...),
    by: Optional[str] = typer.Option(None, "--by"),
    reason: str = typer.Option("", "--reason"),
) -> None:
    """Reject a step waiting for approval: the run rolls back."""
    _vote(run_id, step_id, by, reason, "reject")


@app.command()
def confirm(
    run_id: str = typer.Argument(...),
    step_id: str = typer.Argument(...),
    answer: str = typer.Argument(..., help="One of the step's choices, or the value its input: asks for."),
    by: Optional[str] = typer.Option(None, "--by", help="Who answers (default cli:<os user>)."),
    reason: str = typer.Option("", "--reason"),
) -> None:
    """Answer a core.confirm step waiting for a human (to decline it, `reject` the step)."""
    for name, text in (("ANSWER", answer), ("--reason", reason)):
        if len(text) > ANSWER_MAX:
            raise Failure(f"{name}: at most {ANSWER_MAX} characters, got {len(text)}; nothing was sent", 2)
    settings = _settings()
    api = _api(settings, by)

    async def go() -> Any:
        if api is not None:
            async with api:
                return await api.confirm(run_id, step_id, answer, reason)
        actor, keyring = _actor(settings, by)
        request = ConfirmRequest(step_id=step_id, user=actor.principal, answer=answer, reason=reason)
        return await confirm_step(await connect(settings), run_id, request, actor, keyring)

    print(_run(go).message)


# ---- playbooks -----------------------------------------------------------------------------


@app.command()
def validate(path: Optional[Path] = typer.Argument(None, help="A playbook file or directory.")) -> None:
    """Check playbooks as the bot will load them (for CI)."""
    settings = _settings()
    target = path or settings.playbooks_dir
    if not target.exists():
        raise Failure(f"{target}: no such file or directory")
    try:
        loaded = list(load_directory(target).values())  # a file: checked with its neighbours (sub-playbooks)
    except PlaybookError as exc:
        raise Failure(str(exc)) from None
    for item in loaded:
        pb = item.playbook
        steps = len(pb.leaf_steps()) + sum(len(g.steps) for g in pb.foreach_groups())  # a group's steps: once each
        print(f"ok  {pb.name}  ({item.path}, {steps} steps, {item.hash[:19]})")
        for warning in item.warnings:
            print(f"warning: {warning}", file=sys.stderr)


@app.command(name="test")
def rehearse_cmd(
    path: Optional[Path] = typer.Argument(None, help="A directory of playbooks and *.test.yaml files, or one test file."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Also write JUnit XML here (for CI)."),
) -> None:
    """Rehearse playbooks: run their *.test.yaml cases with mocked actions on a time-skipping server.
    Exit 1 if a case fails, 2 if a test file is bad."""
    settings = _settings()
    from bot.rehearse.report import junit_xml, rehearse, summary
    from bot.rehearse.runner import RehearsalUnavailable

    target = path or settings.playbooks_dir
    if "PLAYBOOK_BOT_LOG_LEVEL" not in os.environ:
        # Rehearsed failures are expected: the worker's warnings about them would bury the report.
        for name in ("temporalio", "bot"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        report = eventloop.run(rehearse(target, settings.policies_dir, say=lambda line: print(line, flush=True)))
    except (RehearsalUnavailable, PolicyLoadError) as exc:
        raise Failure(_reason(exc), code=2) from None
    for bad in report.bad_files:
        print(f"error: {bad}", file=sys.stderr)
    print(summary(report))
    if junit is not None:
        junit.write_text(junit_xml(report), encoding="utf-8")
    raise typer.Exit(report.exit_code)


@app.command()
def schedules(as_json: bool = typer.Option(False, "--json")) -> None:
    """List this task queue's playbook schedules as Temporal has them, with their next run times."""
    from bot.engine.schedules import ScheduleView, list_schedules, planned

    settings = _settings()

    async def go() -> list[ScheduleView]:
        return await list_schedules(await connect(settings), settings.task_queue)

    views = _run(go)
    try:  # entries in the files that no worker has created yet (none started since, or it failed)
        missing = sorted({plan.id for plan in planned(load_directory(settings.playbooks_dir))} - {v.id for v in views})
    except (PlaybookError, OSError):
        missing = []
    for sid in missing:
        print(f"warning: {sid} is in the playbooks but not in Temporal: a worker creates it when it starts",
              file=sys.stderr)
    if as_json:
        print(json.dumps([view.model_dump(mode="json") for view in views], indent=2))
        return
    if not views:
        print(f"no schedules on task queue {settings.task_queue!r} (playbooks declare them under triggers.schedule)")
        return
    out.print(schedules_table(views))


@app.command()
def schema() -> None:
    """Print the playbook JSON Schema (for editors)."""
    print(json.dumps(playbook_json_schema(), indent=2))


def main() -> None:
    """Console script: run the CLI, flush, and leave without interpreter teardown."""
    code = 0
    try:
        result = app(standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        code = 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:
        logging.getLogger("playbook-bot").exception("unexpected error")
        code = 1
    shutdown_tracing()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
