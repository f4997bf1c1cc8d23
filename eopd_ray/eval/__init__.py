"""Evaluation actors and metrics (Avg@k, unbiased Pass@k, math-verify scoring)."""
