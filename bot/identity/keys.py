"""Which envelope keys each process holds: front doors sign, workers verify, the CLI signs only
on the embedded dev stack (with the key `dev` left beside its server's record)."""

from __future__ import annotations

from bot.devstack import read_record
from bot.identity.proofs import Keyring, ProofError, read_dev_key, read_key
from bot.settings import ConfigError, Settings


def configured_key(settings: Settings) -> bytes | None:
    if settings.envelope_key is None:
        return None
    try:
        return read_key(settings.envelope_key.get_secret_value(), "PLAYBOOK_BOT_ENVELOPE_KEY")
    except ProofError as exc:
        raise ConfigError(str(exc)) from None


def embedded_dev_key(settings: Settings) -> bytes | None:
    """The dev key, when this process talks to the embedded dev server `dev` recorded."""
    if settings.temporal_address or read_record(settings.data_dir) is None:
        return None
    return read_dev_key(settings.data_dir)


def front_door_keyring(settings: Settings, dev_key: bytes | None = None) -> Keyring:
    """`serve` signs with PLAYBOOK_BOT_ENVELOPE_KEY; `dev` with it or its own dev key."""
    return Keyring(configured_key(settings) or dev_key)


def worker_keyring(settings: Settings, dev_key: bytes | None = None) -> Keyring:
    key = configured_key(settings)
    dev = dev_key or embedded_dev_key(settings)
    return Keyring(key, [dev] if dev else [])


def cli_keyring(settings: Settings) -> Keyring:
    """Direct-to-Temporal CLI: verified only on the embedded dev stack, never with the production key."""
    return Keyring(embedded_dev_key(settings))


def require_front_door_key(settings: Settings) -> None:
    """`serve` cannot vouch for anyone without the key: refuse to start, naming the fix."""
    if configured_key(settings) is None:
        raise ConfigError(
            "serve needs PLAYBOOK_BOT_ENVELOPE_KEY (the same on every front door and worker, e.g. "
            "`openssl rand -hex 32`): workers only trust what a front door signed"
        )
