"""Evaluation: likelihood bounds and, later, judged quality, diversity and the benchmark runner."""
