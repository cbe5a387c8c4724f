"""Basic-auth credentials from the environment and a mounted Secret file, never from a config.

A username in one variable and the password in a file that another variable names (how a
Kubernetes Secret is mounted): nothing that records the config (config.yaml, the ONNX metadata, a
ConfigMap, a tracking server) can hold them, and the password is not in the process environment
that `kubectl describe` or /proc/<pid>/environ show. The Pushgateway and the data download use it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from job.core.bounded import read_bounded
from job.core.errors import ConfigError

# Where each service's credentials come from: a username variable and a password-file variable.
DATA_USERNAME_ENV, DATA_PASSWORD_FILE_ENV = "DATA_USERNAME", "DATA_PASSWORD_FILE"  # an http(s) data.source
PUSHGATEWAY_USERNAME_ENV, PUSHGATEWAY_PASSWORD_FILE_ENV = "PUSHGATEWAY_USERNAME", "PUSHGATEWAY_PASSWORD_FILE"  # metrics.pushgateway_url
MAX_PASSWORD_BYTES = 4096  # a password file, not /dev/zero or a log file named by mistake


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str = field(repr=False)

    def header(self) -> str:
        """The Authorization header's value."""
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def basic_auth_from_env(username_env: str, password_file_env: str, env: Mapping[str, str]) -> BasicAuth | None:
    """The credentials the two variables name; None when neither is set, ConfigError when one alone is or the file is unusable."""
    username, password_file = env.get(username_env) or None, env.get(password_file_env) or None
    if (username is None) != (password_file is None):
        missing = username_env if username is None else password_file_env
        raise ConfigError(f"basic auth: {missing} is not set; set both {username_env} and {password_file_env}, or neither")
    if username is None or password_file is None:
        return None
    if ":" in username or not username.isprintable():
        raise ConfigError(f"{username_env}: a basic-auth username must be printable and cannot contain ':'")
    return BasicAuth(username, _read_password(Path(password_file), password_file_env))


def _read_password(path: Path, variable: str) -> str:
    raw = read_bounded(path, MAX_PASSWORD_BYTES, ConfigError, f"{variable} {path}")
    try:
        password = raw.decode("utf-8").rstrip("\r\n")  # `echo pw > file` and most Secret tooling add a newline
    except UnicodeDecodeError:
        raise ConfigError(f"{variable} {path}: not UTF-8 text") from None
    if not password:
        raise ConfigError(f"{variable} {path}: empty")
    return password
