"""Evaluation: object discovery, QA, influence graphs, PHYRE metrics."""
