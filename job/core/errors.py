"""One exception per failure kind, each with the process exit code it maps to.

The CLI turns a `JobError` into a one-line message and its `exit_code`; the Kubernetes
Job's `podFailurePolicy` reads the same codes to decide whether a retry can help.
"""

from __future__ import annotations


def one_line(message: str, limit: int = 2000) -> str:
    """`message` as one printable line of at most `limit` characters: control characters escaped, the rest cut."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


class JobError(Exception):
    """Base class: an expected failure with a one-line message and an exit code."""

    exit_code = 1
    reason = "error"


class ConfigError(JobError):
    """Bad command line, config file, environment variable or output location."""

    exit_code = 2
    reason = "config"


class DataError(JobError):
    """The data set is missing, unsafe, corrupt or fails verification."""

    exit_code = 3
    reason = "data"


class ExportError(JobError):
    """Conversion to ONNX failed, or the ONNX model disagrees with Keras."""

    exit_code = 4
    reason = "export"


class ModelFileError(JobError):
    """A model file (weights or ONNX) is missing, corrupt or has the wrong signature."""

    exit_code = 5
    reason = "model_file"


class GateFailed(JobError):
    """The model was validated and fell short of the quality gate."""

    exit_code = 6
    reason = "gate_failed"


class DeviceUnavailable(JobError):
    """A GPU was required (train.device or validate.device) but is not the one running."""

    exit_code = 7
    reason = "device"


class ClusterUnreachable(JobError):
    """No kubeconfig / in-cluster config, or the API server does not answer."""

    exit_code = 8
    reason = "cluster_unreachable"


class ClusterForbidden(JobError):
    """The API server refused the request (RBAC)."""

    exit_code = 9
    reason = "cluster_forbidden"


class JobExists(JobError):
    """A Job of the same name already exists in the namespace."""

    exit_code = 10
    reason = "job_exists"


class ClusterJobFailed(JobError):
    """The Kubernetes Job ended in the Failed condition."""

    exit_code = 11
    reason = "job_failed"


class StorageFull(JobError):
    """A write failed for lack of space or a read-only/failing file system (ENOSPC, EDQUOT, EROFS, EIO).

    Nothing partial is left behind; a retry on the same volume fails the same way until it is freed.
    """

    exit_code = 12
    reason = "storage"


class TrainingDiverged(JobError):
    """The training loss became NaN or infinite: the recipe (learning rate, decay) diverges."""

    exit_code = 13
    reason = "diverged"


class ClusterJobNotFound(JobError):
    """The named Job is not in the namespace: never created there, deleted, or removed by its TTL."""

    exit_code = 14
    reason = "job_not_found"


class ClusterServerError(JobError):
    """The API server failed the request (HTTP 5xx): the cluster's trouble, not the command's; a later retry may work."""

    exit_code = 15
    reason = "cluster_server_error"


class SignatureInvalid(JobError):
    """A published version's signature or gate record does not verify: changed, added or removed files, another key, none."""

    exit_code = 16
    reason = "signature_invalid"


class Preempted(BaseException):
    """SIGTERM arrived: finished stages and epochs are saved; rerun to resume.

    A BaseException, like KeyboardInterrupt: the signal handler raises it wherever the
    program happens to be, and an `except Exception` on the way (logging swallows errors
    raised while it writes a record) must not lose it. 75 is sysexits' EX_TEMPFAIL: a retry
    is expected to succeed.
    """

    exit_code = 75
    reason = "preempted"


# Every expected way to fail: each carries `exit_code` and `reason`; the CLI prints one line.
EXPECTED_FAILURES = (JobError, Preempted)


# Codes no retry can fix; the Job's podFailurePolicy fails at once on these. The `k8s` commands' codes
# (8-11, 14, 15) are the submitting CLI's, never a pod's, so they are not listed.
NON_RETRYABLE_EXIT_CODES = tuple(
    sorted(e.exit_code for e in (
        ConfigError, DataError, ExportError, ModelFileError, GateFailed, DeviceUnavailable, StorageFull, TrainingDiverged
    ))
)

# What a failed trial's record may hold: an error's code (1-15, never 0 or 75) or 128+N for a trial
# process killed by signal N. Anything else in failed.json was not written by this code.
FAILED_TRIAL_EXIT_CODES = frozenset(range(1, 16)) | frozenset(range(129, 129 + 64))
