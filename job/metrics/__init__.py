"""Prometheus: the declared series, the /metrics server, a command's metrics session, the Keras
callback that feeds it, and the Pushgateway push of a run's outcome.

May import: the foundation and job.training.
"""
