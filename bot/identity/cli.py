"""`playbook-bot token issue|list|revoke`: the API's bearer tokens, in the front door's tokens file
(PLAYBOOK_BOT_API_TOKENS_FILE, default DATA_DIR/api-tokens.json). Run it where the front door reads
that file; a running front door sees every change without a restart."""

from __future__ import annotations

import sys

import typer

from bot.identity.tokens import TokenError, TokenStore
from bot.settings import ConfigError, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _store() -> TokenStore:
    try:
        return TokenStore(load_settings().tokens_path)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


@app.command()
def issue(name: str = typer.Argument(..., help="The principal is api:NAME.")) -> None:
    """Issue a token for api:NAME (replacing its earlier one) and print it; only its digest is kept."""
    store = _store()
    try:
        replacing = name in store.entries()
        token = store.issue(name)
    except TokenError as exc:
        raise _fail(str(exc)) from None
    print(token)
    note = "it replaces the earlier one, which no longer works" if replacing else "it is stored only as a digest"
    print(f"issued a token for api:{name} ({note}); it is shown this once", file=sys.stderr)


@app.command("list")
def list_tokens() -> None:
    """Every token's principal and when it was issued (never the token or its digest)."""
    try:
        entries = _store().entries()
    except TokenError as exc:
        raise _fail(str(exc)) from None
    for entry in sorted(entries.values(), key=lambda e: e.name):
        print(f"{entry.principal}\t{entry.created_at}")


@app.command()
def revoke(name: str = typer.Argument(...)) -> None:
    """Revoke api:NAME's token: the front door refuses it from its next request."""
    try:
        revoked = _store().revoke(name)
    except TokenError as exc:
        raise _fail(str(exc)) from None
    if not revoked:
        raise _fail(f"no token for api:{name}; `playbook-bot token list` shows them")
    print(f"revoked api:{name}")
