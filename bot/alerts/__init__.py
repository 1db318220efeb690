"""Alertmanager input: matchers, the webhook payload, and routing alerts to playbook episodes."""
