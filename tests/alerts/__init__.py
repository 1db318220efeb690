"""Alertmanager matchers, webhook payload and alert-episode routing."""
