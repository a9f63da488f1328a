"""Helpers for the tests and the benchmarks only (not installed with vistag).

- :mod:`devkit.postgres`: a throwaway PostgreSQL server on loopback, fresh databases on it.
- :mod:`devkit.http`: a small ``http.client`` helper for talking to ``vistag serve``.

Benchmarks run as ``python bench/x.py`` and put the repository root on ``sys.path`` first.
"""
