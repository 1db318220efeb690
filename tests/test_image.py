"""The production image (Dockerfile + .dockerignore, read as files: no Docker engine here) ships the
real playbooks but not the loopback demo; `make run` (./playbooks) still has the demo."""

from __future__ import annotations

import re
import shlex
from ipaddress import ip_address
from pathlib import Path

import httpx
import pytest

from bot.playbook.loader import load_directory
from bot.playbook.params import ParamError, coerce_params
from bot.playbook.templating import render
from bot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEMO = "playbooks/demo-remediation.yaml"


def _rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as Docker reads it: globs (`**` any depth), `!` re-includes, the last match wins."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        glob = line.lstrip("!").strip().strip("/")
        regex = "".join(
            ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", glob)
        )
        rules.append((keep, re.compile(regex + "$")))
    return rules


def in_build_context(path: str) -> bool:
    """Whether `path` (relative to the repo) reaches the build; a matched directory takes its contents."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for keep, pattern in _rules():
        if any(pattern.match(prefix) for prefix in prefixes):
            included = keep
    return included


def _instructions() -> list[list[str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_matcher_reads_dockerignore_like_docker() -> None:
    assert not in_build_context("tests/security/test_egress.py")  # `tests` takes the whole directory
    assert not in_build_context("bot/__pycache__/cli.cpython-311.pyc")  # `**/__pycache__`
    assert in_build_context("bot/cli.py")


def test_the_demo_playbook_stays_out_of_the_production_image() -> None:
    shipped = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "playbooks").glob("*.yaml"))
    assert DEMO in shipped
    assert not in_build_context(DEMO)
    assert [p for p in shipped if in_build_context(p)] == [p for p in shipped if p != DEMO]
    assert in_build_context("policies/playbook/authz/authz.rego")

    # Every file the image gets comes from the build context, which .dockerignore filters.
    steps = _instructions()
    assert not [s for s in steps if s[0].upper() == "ADD"], "ADD can fetch from URLs and git: use COPY"
    copies = [s for s in steps if s[0].upper() == "COPY"]
    from_context = [s for s in copies if not any(arg.startswith("--from") for arg in s)]
    assert any(s[-2:] == ["playbooks", "./playbooks"] for s in from_context)
    for step in copies:
        if any(arg.startswith("--from") for arg in step):
            assert step[-2:] == ["/opt/venv", "/opt/venv"], step  # only the built virtualenv crosses stages


def test_make_run_still_shows_the_demo() -> None:
    assert "playbook-bot dev" in (ROOT / "Makefile").read_text()
    assert Settings().playbooks_dir == Path("playbooks")
    assert "demo-remediation" in load_directory(ROOT / "playbooks")


def _loopback(url: str) -> bool:
    host = httpx.URL(url).host
    return host == "localhost" or ip_address(host).is_loopback


def test_the_demo_only_calls_loopback() -> None:
    demo = load_directory(ROOT / "playbooks").get("demo-remediation").playbook
    spec = demo.params["bot_url"]
    assert spec.enum and all(_loopback(url) for url in [*spec.enum, spec.default])
    for hostile in ("http://169.254.169.254", "http://deploy.internal", "http://127.0.0.1.evil.test:8080"):
        with pytest.raises(ParamError, match="bot_url"):
            coerce_params(demo, {"bot_url": hostile})
    for url in spec.enum:
        params = coerce_params(demo, {"bot_url": url})
        context = {"params": params, "vars": demo.vars, "alert": None, "run": {}, "steps": {}}
        for step in demo.leaf_steps():
            for with_ in (step.with_, step.compensate.with_ if step.compensate else {}):
                if "url" in with_:
                    assert _loopback(render(with_["url"], context)), (step.id, url)
