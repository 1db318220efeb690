"""Secret references as the workflow hands them to an activity: what `{{ secret("NAME") }}` renders to."""

from __future__ import annotations

from bot.playbook.templating import render


def ref(name: str) -> str:
    """The marker for `name`, made by the real renderer (the activity resolves nothing else)."""
    return render('{{ secret("' + name + '") }}', {}, secrets=[name])
