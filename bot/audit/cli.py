"""`playbook-bot audit export|verify|tail|show-output`: read the audit trail; these commands never write it.
`audit migrate` copies a SQLite trail into PostgreSQL; `audit schema` creates or migrates PostgreSQL's.

The store is PLAYBOOK_BOT_AUDIT_URL's PostgreSQL when set, else the SQLite file (`--db` picks a
file). They never create a store either: pointed at a path with no database, or a PostgreSQL
database without the schema, they say so instead of reporting an empty, "intact" trail.
"""

from __future__ import annotations

import time
from hashlib import sha256
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from bot.audit.backend import AuditStore, audit_url
from bot.audit.events import EventKind, StoredEvent, canonical_json, format_ts
from bot.audit.export import json_text, summary, to_json, to_markdown
from bot.audit.store import AuditUnavailable, SqliteAuditStore, default_path
from bot.settings import ConfigError
from bot.terminal import visible

app = typer.Typer(help="Export, verify and follow the audit trail.", no_args_is_help=True)

DbOption = Annotated[
    Path | None,
    typer.Option(
        "--db", help="SQLite audit file (default: PLAYBOOK_BOT_AUDIT_URL if set, else PLAYBOOK_BOT_DATA_DIR/audit.db)."
    ),
]


class Format(StrEnum):
    json = "json"
    md = "md"


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings():  # noqa: ANN202 - Settings, imported late like the other commands do
    from bot.settings import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        raise _fail(str(exc)) from None


@contextmanager
def _store(db: Path | None, missing: str = "") -> Iterator[AuditStore]:
    """Open an existing store; any store failure becomes one `error:` line and exit 1."""
    store: AuditStore
    if db is None:
        settings = _settings()
        try:
            url = audit_url(settings)
        except ConfigError as exc:
            raise _fail(str(exc), code=2) from None
        db = default_path(settings) if url is None else None
    if db is None:
        from bot.audit.postgres import PostgresAuditStore

        store = PostgresAuditStore(url, create=False)  # type: ignore[arg-type]  # set when db is None
    else:
        if not db.is_file():
            raise _fail(f"{missing}no audit store at {db}")
        store = SqliteAuditStore(db)
    try:
        yield store
    except (AuditUnavailable, ValueError) as exc:
        raise _fail(str(exc).splitlines()[0]) from None
    finally:
        store.close()


@app.command("export")
def export_command(
    run_id: Annotated[str, typer.Argument(help="The run id (its Temporal workflow id).")],
    format: Annotated[Format, typer.Option("--format", help="json (machines) or md (postmortem timeline).")] = (
        Format.json
    ),
    db: DbOption = None,
) -> None:
    """Print one run's audit events, oldest first."""
    not_found = f"no audit events for run {run_id!r}"
    with _store(db, missing=f"{not_found}: ") as store:
        events = store.events(run_id=run_id)
    if not events:
        raise _fail(not_found)
    typer.echo(to_json(events) if format is Format.json else to_markdown(events, run_id).rstrip("\n"))


@app.command("verify")
def verify_command(
    db: DbOption = None,
    checkpoints: Annotated[
        Path | None,
        typer.Option("--checkpoints", help="Also check the signed chain heads in this file (PLAYBOOK_BOT_AUDIT_CHECKPOINT_FILE)."),
    ] = None,
) -> None:
    """Recompute the hash chain; exit 1 naming the first event that was changed or removed."""
    from bot.audit.checkpoint import check_checkpoints
    from bot.identity.keys import worker_keyring

    keyring = None
    if checkpoints is not None:
        if not checkpoints.is_file():
            raise _fail(f"no checkpoint file at {checkpoints}", code=2)
        try:
            keyring = worker_keyring(_settings())
        except ConfigError as exc:
            raise _fail(str(exc), code=2) from None
        if not keyring.can_verify:
            raise _fail("--checkpoints needs the key that sealed them: set PLAYBOOK_BOT_ENVELOPE_KEY", code=2)
    with _store(db) as store:
        result = store.verify()
        warning = store.privilege_warning() if hasattr(store, "privilege_warning") else None
        counted, problems = check_checkpoints(checkpoints, store, keyring) if keyring and checkpoints else (0, [])
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    if not result.ok:
        raise _fail(f"audit chain broken: {result.reason} ({result.checked} events before it are intact)")
    for problem in problems:
        typer.echo(f"error: checkpoint: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    tail = f", {counted} checkpoints hold" if checkpoints is not None else ""
    typer.echo(f"ok: {result.checked} events, chain intact{tail}")


@app.command("schema")
def schema_command(
    url: Annotated[
        str | None, typer.Option("--url", help="postgresql://... of the tables' owner (default: PLAYBOOK_BOT_AUDIT_URL).")
    ] = None,
    grant: Annotated[
        str | None, typer.Option("--grant", help="Then give this role what the bot needs at run time, no more.")
    ] = None,
) -> None:
    """Create or migrate the PostgreSQL audit schema (what the bot does at start), e.g. as the owner
    when the bot itself runs as a role that may only insert and read (docs/security.md)."""
    import psycopg

    from bot.audit.pg_schema import SCHEMA_VERSION, grant_runtime
    from bot.audit.postgres import PostgresAuditStore

    try:
        url = url or audit_url(_settings())
    except ConfigError as exc:
        raise _fail(str(exc), code=2) from None
    if url is None or not url.startswith(("postgresql://", "postgres://")):
        raise _fail("--url postgresql://... is missing (or set PLAYBOOK_BOT_AUDIT_URL)", code=2)
    with PostgresAuditStore(url) as store:
        if problem := store.check_writable():
            raise _fail(problem.splitlines()[0])
    if grant:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                grant_runtime(conn, grant)
        except psycopg.Error as exc:
            raise _fail(f"cannot grant the runtime privileges to role {grant!r}: {str(exc).strip()}") from None
        typer.echo(f"ok: role {grant!r} may read and append the audit trail, and nothing more")
    typer.echo(f"ok: audit schema at version {SCHEMA_VERSION}")


@app.command("migrate")
def migrate_command(
    source: Annotated[str, typer.Option("--from", help="The SQLite trail: sqlite:///path/to/audit.db")],
    target: Annotated[
        str | None, typer.Option("--to", help="postgresql://... (default: PLAYBOOK_BOT_AUDIT_URL); PGPASSWORD works.")
    ] = None,
) -> None:
    """Copy a SQLite trail into PostgreSQL as it is, verify it there; resumes a partial copy."""
    from bot.audit.migrate import MigrateError, migrate, sqlite_path
    from bot.audit.postgres import PostgresAuditStore

    try:
        path = sqlite_path(source)
        url = target or audit_url(_settings())
        if url is None:
            raise MigrateError("--to is missing: give --to postgresql://user@host/db or set PLAYBOOK_BOT_AUDIT_URL")
        if not url.startswith(("postgresql://", "postgres://")):
            raise MigrateError(f"--to must be a postgresql:// URL (got {url.split(':', 1)[0]!r})")
        if not path.is_file():
            raise MigrateError(f"--from: no audit store at {path}")
        with SqliteAuditStore(path) as old, PostgresAuditStore(url) as new:
            result = migrate(old, new)
    except (MigrateError, ConfigError, AuditUnavailable) as exc:
        raise _fail(str(exc).splitlines()[0], code=2) from None
    typer.echo(
        f"ok: {result.source_events} events in the source, {result.already_there} already in the target, "
        f"{result.copied} copied; the target verifies with {result.target_events} events"
    )


@app.command("show-output")
def show_output_command(
    event_id: Annotated[str, typer.Argument(help="The step_output event id a step's status points to (output_ref).")],
    db: DbOption = None,
) -> None:
    """Print a large step output kept in the trail, as JSON, after checking it against its event's hashes."""
    with _store(db) as store:
        event = store.get_event(event_id)
    if event is None:
        raise _fail(f"no audit event {event_id!r}")
    if event.kind is not EventKind.step_output:
        raise _fail(f"event {event_id!r} is a {event.kind.value}, not a step_output: `audit export` shows it")
    output = event.details.get("output")
    if event.expected_hash() != event.hash or sha256(canonical_json(output).encode()).hexdigest() != event.details.get(
        "sha256"
    ):
        raise _fail(f"event {event_id!r} does not match its hash: the trail was changed (run `audit verify`)")
    typer.echo(json_text(output))


@app.command("tail")
def tail_command(
    run: Annotated[str | None, typer.Option("--run", help="Only this run's events.")] = None,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.01, help="Seconds between polls.")] = 0.5,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="How many recent events to show first.")] = 20,
    max_polls: Annotated[int | None, typer.Option("--max-polls", hidden=True)] = None,
    db: DbOption = None,
) -> None:
    """Print the latest events, one line each."""
    with _store(db) as store:
        recent = store.last(lines, run_id=run)
        for event in recent:
            _echo(event)
        if not follow_:
            return
        newest = store.last(1)
        after = max([event.seq for event in recent + newest], default=0)
        try:
            follow(store, run_id=run, after_seq=after, interval=interval, emit=_echo, max_polls=max_polls)
        except KeyboardInterrupt:  # Ctrl-C is how a follow ends
            pass


def _echo(event: StoredEvent) -> None:
    typer.echo(format_line(event))


def follow(
    store: AuditStore,
    *,
    run_id: str | None,
    after_seq: int,
    interval: float,
    emit: Callable[[StoredEvent], None],
    max_polls: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll for events after `after_seq` and emit each; returns the last seq emitted. Runs
    until interrupted, or for `max_polls` polls (tests)."""
    polls = 0
    while True:
        for event in store.events(run_id=run_id, after_seq=after_seq):
            emit(event)
            after_seq = event.seq
        polls += 1
        if max_polls is not None and polls >= max_polls:
            return after_seq
        sleep(interval)


def format_line(event: StoredEvent) -> str:
    where = visible(f"{event.run_id or '-'}/{event.step_id or '-'}")
    return f"{event.seq:>6}  {format_ts(event.ts)}  {event.kind.value:<22}  {where}  {visible(event.actor)}  {summary(event)}"
