"""`playbook-bot policy test|eval`: run the Rego tests, or ask the configured engine one question."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from bot import eventloop
from bot.policy.engine import PolicyEngine, make_engine
from bot.policy.errors import PolicyLoadError
from bot.policy.models import Verdict
from bot.policy.testing import run_tests

app = typer.Typer(help="Test and evaluate the Rego policies.", no_args_is_help=True)


class Rule(StrEnum):
    decision = "decision"
    approver = "approver"
    start = "start"
    cancel = "cancel"


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings() -> Any:
    from bot.settings import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        raise _fail(str(exc)) from None


@app.command("test")
def test_command(
    dir: Annotated[
        Path | None, typer.Option("--dir", help="Policies directory (default: settings.policies_dir).")
    ] = None,
) -> None:
    """Run every test_* rule of the *_test.rego files; exit 1 when one fails or none ran."""
    policies_dir = dir if dir is not None else _settings().policies_dir
    report = run_tests(policies_dir)
    if report.error is not None:
        raise _fail(str(report.error))
    for result in report.results:
        status = "PASS" if result.passed else "FAIL"
        detail = "" if result.passed else f": {result.error}"
        typer.echo(f"{status} {result.name} ({result.file}:{result.line}){detail}")
    if not report.results:
        raise _fail(f"no test ran: no test_* rules in *_test.rego files under {policies_dir}")
    typer.echo(f"{report.passed_count} passed, {report.failed_count} failed")
    if not report.ok:
        raise typer.Exit(1)


@app.command("eval")
def eval_command(
    input: Annotated[Path, typer.Option("--input", help="JSON file holding the policy input.")],
    rule: Annotated[Rule, typer.Option("--rule", help="Which answer to ask for.")] = Rule.decision,
) -> None:
    """Print the engine's answer as JSON; exit 1 when it failed closed (reason on stderr)."""
    try:
        document = json.loads(input.read_text())
    except OSError as exc:
        raise _fail(f"cannot read {input}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise _fail(f"{input}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    if not isinstance(document, dict):
        raise _fail(f"{input}: the input must be a JSON object")
    engine = make_engine(_settings())
    try:
        answer = eventloop.run(_ask(engine, rule, document))
    except PolicyLoadError as exc:
        raise _fail(str(exc)) from None
    typer.echo(answer.model_dump_json(indent=2))
    if answer.failure is not None:
        raise _fail(f"policy failed closed ({answer.failure.value}): {'; '.join(answer.reasons)}")


async def _ask(engine: PolicyEngine, rule: Rule, document: dict[str, Any]) -> Verdict:
    try:
        await engine.load()
        if rule is Rule.decision:
            return await engine.decide(document)
        if rule is Rule.approver:
            return await engine.approver(document)
        if rule is Rule.cancel:
            return await engine.cancel(document)
        return await engine.start(document)
    finally:
        await engine.close()
