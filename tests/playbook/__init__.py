"""Playbook format, loader, checks, params, templating and JSON Schema."""
