"""The PostgreSQL audit URL's password must not reach a message: the store's name and every reason
it gives (`/readyz` shows check_writable's without authentication, the receiver's 503 body, logs).
libpq takes a password with `?` or `#` unencoded (the user info ends at the first `@` before a
`/`), decodes percent-encoded query keys, and quotes a bad percent-escape in its own error."""

from __future__ import annotations

import pytest

from bot.audit.postgres import PostgresAuditStore, redact

SECRET = "s3cretpw"


@pytest.mark.parametrize("url", [
    f"postgresql://bot:{SECRET}?x@127.0.0.1:1/audit",
    f"postgresql://bot:{SECRET}#x@127.0.0.1:1/audit",
    f"postgresql://bot:a/{SECRET}@127.0.0.1:1/audit",  # not a password to libpq, still not shown
    f"postgresql://127.0.0.1:1/audit?pass%77ord={SECRET}",
    f"postgresql://127.0.0.1:1/audit?sslmode=disable&PASSWORD={SECRET}",
    f"postgresql://bot:{SECRET}%zz@127.0.0.1:1/audit",  # libpq: invalid percent-encoded token "..."
    f"postgresql://127.0.0.1:1/audit?password={SECRET}%zz",
])
def test_no_message_of_the_store_shows_the_password(url: str) -> None:
    store = PostgresAuditStore(url, timeout=1.0)
    reason = store.check_writable()
    assert reason is not None and "cannot write to it" in reason
    for shown in (store.name, repr(store), reason, redact(url)):
        assert SECRET not in shown, shown


def test_the_redacted_url_still_says_where_the_store_is() -> None:
    assert redact(f"postgresql://bot:{SECRET}?x@db:5432/audit") == "postgresql://bot:***@db:5432/audit"
    assert redact(f"postgresql://db/audit?sslmode=require&pass%77ord={SECRET}") == (
        "postgresql://db/audit?sslmode=require&pass%77ord=***")
