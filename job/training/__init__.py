"""The train stage: the tf.data input pipeline, learning-rate schedules, resumable training that keeps
the best weights, and the history it writes.

May import: the foundation (job.core, job.config, job.models, job.data).
"""
