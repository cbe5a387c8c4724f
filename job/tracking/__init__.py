"""MLflow tracking and Model Registry, optional and off by default: a command's params, per-epoch metrics, stage
outcomes, artifacts and published models mirrored to a tracking server that may fail without failing the run.

May import: the foundation (job.core, job.config, job.models, job.data, job.stage) and, lazily, MLflow. job.metrics
and job.tracking do not import each other: the stage runner, the CLI and the experiment runner wire both.
"""
