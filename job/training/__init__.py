"""The train stage: the tf.data input pipeline, learning-rate schedules, lookahead averaging, resumable training that keeps
the best weights, and the history it writes (JSON, CSV, plots, TensorBoard scalars).

May import: the foundation (job.core, job.config, job.models, job.data).
"""
