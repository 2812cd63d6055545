"""Benchmarks for dagworker against a native Celery canvas app (issues 3 and 7).

Run with ``python -m bench`` (``--quick`` for a short pass, ``--only SHAPE`` for one shape).
Everything here prints figures and asserts nothing; docs/benchmarks.md explains the layout.
"""
