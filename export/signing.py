"""Sign a version before it is published: every file of it, and a statement of what the gate measured.

The repository is storage that others can write; a signature lets a serving team check, offline
and with the public key alone, that the bytes they are about to load are the ones this job
measured and published. The format is the OpenSSF model-signing one (`model-signing`, Sigstore
bundles), so the upstream `model_signing verify key DIR --signature DIR/model.sig --public_key
KEY` (or `verify certificate`) checks a version without this project installed. Two files enter
the version directory while it is still staged (export/repository.py), so a version appears whole
and signed or not at all; Triton and KServe load model.onnx and leave them alone:

- GATE_RECORD, a Sigstore bundle of a signed in-toto statement: its subject is model.onnx's sha256,
  its predicate what publish measured and judged (scores, thresholds, the data's fingerprint, the
  config's digest, the software's versions), so a team can check what the model scored, and on
  which data, not only who published it.
- SIGNATURE, the model-signing bundle over every file of the directory but itself (GATE_RECORD
  included), by file name and sha256: a changed, added or removed file fails verification.

Keys are ECDSA (P-256, P-384, P-521) in PEM; with a certificate (a private CA), the bundle carries
the certificate and its chain. Keyless Sigstore signing needs an OIDC identity and network access
that a Job rarely has: not offered here (docs/pages/security.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from job.config.settings import PublishConfig
from job.core.bounded import read_bounded
from job.core.errors import ConfigError

SIGNATURE = "model.sig"
GATE_RECORD = "gate.sigstore.json"
GATE_PREDICATE = "https://github.com/cifar-job/cifar-job/blob/main/docs/pages/security.md#the-gate-record"
IN_TOTO_STATEMENT = "https://in-toto.io/Statement/v1"
MAX_PEM_BYTES = 1 << 20
SIGNING_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what model signing takes


class _Statement:
    """What model-signing's signers sign: an object whose `statement.pb` is an in-toto Statement message."""

    def __init__(self, statement: Mapping[str, Any]) -> None:
        from google.protobuf import json_format
        from in_toto_attestation.v1 import statement_pb2

        message = statement_pb2.Statement()
        json_format.ParseDict(statement, message)
        self.statement = self
        self.pb = message


def signer(publish: PublishConfig) -> Any | None:
    """model-signing's signer for the configured key (and certificate), checked now, before any work; None: signing is off.

    The key and certificates are read bounded and never quoted: a message names the file and the problem only.
    """
    if publish.signing_key is None:
        return None
    from model_signing._signing import sign_certificate, sign_ec_key

    key = _private_key(publish.signing_key)
    if publish.signing_certificate is None:
        return sign_ec_key.Signer(publish.signing_key)
    certificates = [_certificates("signing_certificate", publish.signing_certificate)]
    certificates += [_certificates("certificate_chain", path) for path in publish.certificate_chain]
    if certificates[0][0].public_key() != key.public_key():
        raise ConfigError(f"config key publish.signing_certificate: {publish.signing_certificate}: does not certify publish.signing_key")
    return sign_certificate.Signer(publish.signing_key, publish.signing_certificate, publish.certificate_chain)


def _private_key(path: Path) -> Any:
    """The signing key, read bounded and checked to be one model signing takes; a message never quotes the file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    where = f"config key publish.signing_key: {path}"
    try:
        key = serialization.load_pem_private_key(read_bounded(path, MAX_PEM_BYTES, ConfigError, where), password=None)
    except TypeError:
        raise ConfigError(f"{where}: an encrypted key; mount it unencrypted, from a Secret") from None
    except ValueError:
        raise ConfigError(f"{where}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in SIGNING_CURVES:
        raise ConfigError(f"{where}: not an ECDSA key on P-256, P-384 or P-521")
    return key


def _certificates(key: str, path: Path) -> list[Any]:
    from cryptography import x509

    where = f"config key publish.{key}: {path}"
    try:
        return x509.load_pem_x509_certificates(read_bounded(path, MAX_PEM_BYTES, ConfigError, where))
    except ValueError:
        raise ConfigError(f"{where}: not PEM certificates") from None


def gate_statement(model_sha256: str, predicate: Mapping[str, Any]) -> dict[str, Any]:
    """The in-toto statement of a gate's measurement: subject model.onnx by sha256, predicate what was measured."""
    return {
        "_type": IN_TOTO_STATEMENT,
        "subject": [{"name": "model.onnx", "digest": {"sha256": model_sha256}}],
        "predicateType": GATE_PREDICATE,
        "predicate": json.loads(json.dumps(predicate)),  # plain JSON: what a protobuf Struct holds
    }


def seal(directory: Path, signing: Any, statement: Mapping[str, Any]) -> None:
    """Sign a staged version: GATE_RECORD first, then SIGNATURE over every file, GATE_RECORD included."""
    from model_signing._signing import signing as payloads

    signing.sign(_Statement(statement)).write(directory / GATE_RECORD)
    manifest = hashing_config().hash(directory)
    signing.sign(payloads.Payload(manifest)).write(directory / SIGNATURE)


def hashing_config() -> Any:
    """Every file by name and sha256, the signature itself left out; nothing else is (git's files included)."""
    from model_signing import hashing

    return hashing.Config().use_file_serialization(hashing_algorithm="sha256").set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)
