"""bot/actions/shell_leader.py: the command starts and ends as if no leader stood between it and the
worker (signals at their defaults, only its documented environment, its own exit status on a timeout,
an exec failure told on the leader's own pipe). Review of the leader: each failed with its first version."""
from __future__ import annotations

import pytest

from bot.actions.base import ActionContext, ActionFailed
from bot.actions.shell import ShellActions, ShellRunParams

CTX = ActionContext("r", "s", "p", "k", 1, False)


def actions(environ: dict[str, str]) -> ShellActions:
    return ShellActions(["sh", "env", "grep"], kill_grace=1.0, environ=environ)


async def test_the_command_gets_sigpipe_and_sigxfsz_at_their_defaults() -> None:
    """Python ignores SIGPIPE and SIGXFSZ at start; the leader's fork+execv passes that on
    (subprocess's restore_signals did not apply): `producer | head` now gets EPIPE errors."""
    out = await actions({"PATH": "/usr/bin:/bin"}).run(
        ShellRunParams(argv=["grep", "SigIgn", "/proc/self/status"]), CTX)
    ignored = int(out["stdout"].split()[1], 16)
    assert not ignored & (1 << (13 - 1)), "SIGPIPE ignored in the command"
    assert not ignored & (1 << (25 - 1)), "SIGXFSZ ignored in the command"


async def test_the_command_gets_only_the_documented_environment() -> None:
    """Without LANG/LC_* (a systemd unit, a bare container), the leader's own C-locale coercion
    (PEP 538) adds LC_CTYPE=C.UTF-8 to every command's environment."""
    out = await actions({"PATH": "/usr/bin:/bin"}).run(ShellRunParams(argv=["env"]), CTX)
    names = {line.split("=", 1)[0] for line in out["stdout"].splitlines()}
    assert names == {"PATH", "PLAYBOOK_BOT_IDEMPOTENCY_KEY", "PLAYBOOK_BOT_RUN_ID", "PLAYBOOK_BOT_STEP_ID"}, names


async def test_a_timed_out_command_that_exits_on_sigterm_reports_its_own_end() -> None:
    """Before the leader: exit_code 3 (its trap) or -15; now always -9, the leader's own SIGKILL."""
    with pytest.raises(ActionFailed) as caught:
        await actions({"PATH": "/usr/bin:/bin"}).run(ShellRunParams(
            argv=["sh", "-c", 'trap "exit 3" TERM; sleep 30 & wait'], timeout="1s"), CTX)
    assert caught.value.details[0]["exit_code"] == 3


async def test_a_command_exiting_255_with_leader_like_stderr_is_a_plain_failure() -> None:
    with pytest.raises(ActionFailed):  # ValueError: invalid literal for int()
        await actions({"PATH": "/usr/bin:/bin"}).run(ShellRunParams(
            argv=["sh", "-c", 'echo "shell_leader: cannot start: oops" >&2; exit 255']), CTX)
