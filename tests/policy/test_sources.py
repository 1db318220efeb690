"""Policy files are read as OPA reads a directory: data mounted at its directory path."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.policy.errors import PolicyLoadError
from bot.policy.sources import read_sources, tree_signature


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_data_is_mounted_at_its_directory_and_tests_are_kept_apart(tmp_path: Path) -> None:
    write(tmp_path, "playbook/authz/authz.rego", "package playbook.authz\n")
    test_source = "package playbook.authz_test\n\ntest_a if true\n\ntest_a if 1 == 2\n"
    write(tmp_path, "playbook/authz/authz_test.rego", test_source)
    write(tmp_path, "playbook/data.json", '{"groups": {"sre": ["u1"]}}')
    write(tmp_path, "playbook/extra/more.json", '{"x": 1}')
    write(tmp_path, "data.json", '{"top": true}')
    write(tmp_path, ".git/ignored.json", "not json")

    sources = read_sources(tmp_path, include_tests=True)

    assert sources.data == {"top": True, "playbook": {"groups": {"sre": ["u1"]}, "extra": {"x": 1}}}
    assert list(sources.modules) == [str(tmp_path / "playbook/authz/authz.rego")]
    assert [(rule.entrypoint, rule.line) for rule in sources.test_rules()] == [("playbook/authz_test/test_a", 3)]


def test_tests_do_not_change_the_policy_hash(tmp_path: Path) -> None:
    write(tmp_path, "p/p.rego", "package p\n")
    before = read_sources(tmp_path).hash
    write(tmp_path, "p/p_test.rego", "package p_test\n\ntest_x if true\n")
    assert read_sources(tmp_path).hash == before
    write(tmp_path, "p/data.json", "{}")
    assert read_sources(tmp_path).hash != before


def test_data_set_twice_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "data.json", '{"a": {"b": 1}}')
    write(tmp_path, "a/data.json", '{"b": 2}')

    with pytest.raises(PolicyLoadError, match=r"data\.a\.b is set twice"):
        read_sources(tmp_path)


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="does not exist"):
        read_sources(tmp_path / "nope")


def test_signature_changes_with_content(tmp_path: Path) -> None:
    path = write(tmp_path, "p/p.rego", "package p\n")
    before = tree_signature(tmp_path)
    path.write_text("package p\n\nx := 1\n")
    assert tree_signature(tmp_path) != before
