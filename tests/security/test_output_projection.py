"""A large output's kept projection (bot/playbook/outputs.py) must give every template the values
it would have read from the whole output: a template that reads more than was kept sees a smaller
mapping, silently (a loop over fewer hosts, a check over fewer conditions)."""

from __future__ import annotations

import pytest

from bot.playbook.outputs import kept, needs_of, output_needs
from bot.playbook.templating import ENV
from tests.engine.support import playbook

# `kubectl get -o json` of a list: a key named like a mapping's method
PODS = {"apiVersion": "v1", "kind": "List", "items": [{"name": "p-1"}, {"name": "p-2"}],
        "metadata": {"resourceVersion": "7"}, "unhealthy": ["p-2"]}


@pytest.mark.parametrize("read", [
    "{% for key, value in steps.pods.output.items() %}{{ key }}={{ value | tojson }};{% endfor %}",
    "{{ steps.pods.output.keys() | list | tojson }}",
    "{{ steps.pods.output.copy() | tojson }}",
])
def test_a_mapping_method_reads_the_whole_output_even_when_a_key_has_its_name(read: str) -> None:
    """Jinja's `x.items` is the method when x has one (attributes before keys): it reads all of x,
    whatever keys x holds."""
    pb = playbook(f"""
name: projection
steps:
  - {{id: pods, action: t.ok}}
  - {{id: use, action: t.ok, with: {{x: "{read}"}}}}
""")
    keep = kept(PODS, needs_of(output_needs(pb), "pods"))
    template = ENV.from_string(read)
    assert template.render(steps={"pods": {"output": keep}}) == template.render(steps={"pods": {"output": PODS}})
