"""Continual learning: scenarios, methods, metrics, the runner."""
