"""CIFAR-10 from an untrusted source: the archive, gzip and pickle readers, extracted directories, the
download, and the verified data set with its fingerprint.

May import: job.core, job.config, job.models.
"""
