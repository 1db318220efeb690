"""Namespaced principals: `slack:<user id>`, `cli:<name>`, `api:<name>`, and the service actors.

A principal names a login, not a person (Vault's alias, not its entity): policy maps principals
to people (`data.playbook.people`), and four-eyes and one-vote-per-person compare people.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass, field
from typing import Any, Literal

SERVICES = frozenset({"alertmanager", "grafana", "schedule", "pagerduty", "opsgenie"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")
_SLACK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # Slack's are U…/W…; tests may say more

# How a principal was verified: Slack's request signature, an API bearer token, the webhook's
# bearer token (Alertmanager's, Grafana's or Opsgenie's, each on its own route), PagerDuty's body
# signature, being on the embedded dev stack (the CLI there holds the dev key file), or a schedule a
# worker signed from its own catalog (bot/engine/schedules.py).
VerifiedBy = Literal["slack", "api", "alertmanager", "dev", "schedule", "grafana", "pagerduty", "opsgenie"]
# Services that post alerts: each is the principal, the trigger kind and the verifier of its runs.
ALERT_SENDERS = frozenset({"alertmanager", "grafana", "pagerduty", "opsgenie"})


class PrincipalError(ValueError):
    """A principal that cannot be: the message says what form is expected."""


FORMS = "slack:<user id>, cli:<name>, api:<name>"  # what a person's principal looks like (services aside)


def check(principal: str) -> str:
    """The principal as given, or PrincipalError naming the expected forms."""
    kind, sep, name = principal.partition(":")
    if not sep and principal in SERVICES:
        return principal
    if kind == "slack" and _SLACK_ID.match(name):
        return principal
    if kind in ("cli", "api") and _NAME.match(name):
        return principal
    raise PrincipalError(
        f"{principal!r} is not a principal: expected {FORMS} or one of "
        + ", ".join(sorted(SERVICES))
    )


def is_principal(text: str) -> bool:
    """Whether `text` is a principal (`check` without the error): for a caller that refuses with
    its own words, such as a vote's validator."""
    try:
        check(text)
    except PrincipalError:
        return False
    return True


def kind_of(principal: str) -> str:
    """'slack', 'cli', 'api', or the service name itself."""
    return principal.partition(":")[0]


def slack(user_id: str) -> str:
    return check(f"slack:{user_id}")


def api(name: str) -> str:
    return check(f"api:{name}")


def cli(by: str | None) -> str:
    """`--by WHO` on the CLI names `cli:WHO` (default: the OS user). Another namespace is refused:
    the CLI cannot speak for a Slack user or an API token."""
    name = by if by else getpass.getuser()
    if name.startswith("cli:"):
        name = name[4:]
    if ":" in name or name in SERVICES:
        raise PrincipalError(f"--by names a CLI user (cli:<name>); {name!r} is not one the CLI may claim")
    if not _NAME.match(name):
        raise PrincipalError(f"--by {name!r}: a CLI user name is letters, digits and . _ @ - (at most 64)")
    return f"cli:{name}"


@dataclass(frozen=True)
class Actor:
    """A principal as the front door knows it: verified (and how) or not, with its groups.

    Groups are only ever taken from a verified source (Slack's user groups for a signed request);
    an unverified actor has none, whatever a client claims.
    """

    principal: str
    name: str = ""
    groups: tuple[str, ...] = field(default_factory=tuple)
    verified_by: VerifiedBy | None = None

    @property
    def verified(self) -> bool:
        return self.verified_by is not None

    def policy_user(self) -> dict[str, Any]:
        """`input.user` of the policy contract."""
        return {
            "id": self.principal,
            "name": self.name or self.principal,
            "groups": list(self.groups) if self.verified else [],
            "verified": self.verified,
            "verified_by": self.verified_by,
        }
