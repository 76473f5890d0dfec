"""Shared code every app uses: the HTTP edge, errors, database-error mapping, observation,
logging, flags, paths, the database threads, server and TLS plumbing.

Imports nothing of this repository (tests/test_layering.py)."""
