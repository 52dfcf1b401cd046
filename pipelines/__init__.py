"""Dagster wiring: the jobs, sensors and schedules that turn the loop, and the Definitions."""
