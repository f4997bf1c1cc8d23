"""Datasets: the offline synthetic math task and prompt loading."""
