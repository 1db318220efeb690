"""Slack: Bolt app factory, command and action handlers, Block Kit rendering."""
