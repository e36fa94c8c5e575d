"""Benchmarks of perturbd against the floor and against the peers' way (never collected by pytest).

Run from the repository root as modules, e.g. ``python -m benchmarks.bench_train --help``;
see ``benchmarks/README.md``.
"""
