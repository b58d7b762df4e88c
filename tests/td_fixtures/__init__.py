"""Fixture modules of tests/conftest.py, one job each; the conftest star-imports their fixtures."""
