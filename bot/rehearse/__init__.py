"""Rehearsals: `*.test.yaml` cases run on Temporal's time-skipping server with mocked actions."""
