"""Deterministic, seeded simulation of the cluster logic (see ``simulator.py``)."""
