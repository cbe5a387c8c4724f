"""Kubernetes: the chart rendered by the Helm engine, the cluster client that submits and watches the
Job, and the `cifar-job k8s` commands.

May import: the foundation.
"""
