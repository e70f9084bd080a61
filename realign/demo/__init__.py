"""Embedded data for the default demo and the tests (see tasks.py): nothing is downloaded."""
