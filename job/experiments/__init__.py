"""Experiments: the local and Indexed-Job runners of an experiment's trials, their summary and
selection, and the `cifar-job experiment` commands.

May import: the foundation, job.metrics and the stage runner (job.stages).
"""
