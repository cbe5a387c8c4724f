"""Verify signed versions offline, before serving them: `cifar-job verify PATH --public-key KEY` (or `--cert-chain CA`).

PATH is a version directory, a model directory (each of its versions) or a repository root (each
version of each model). A version verifies when (export/signing.py) its SIGNATURE is a bundle
signed by the trusted key, or by a certificate that chains to the trusted CA; the files it lists
are exactly the directory's, each with its sha256; and its GATE_RECORD, signed the same way, is a
gate statement about this directory's model.onnx, under this model name and version (so a whole
version copied to another name or number is refused too). Everything read is bounded and read
without blocking, and a link, FIFO or subdirectory in a version is refused before any hashing.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export import repository
from export.model_config import CONFIG_FILE
from export.signing import GATE_PREDICATE, GATE_RECORD, IN_TOTO_STATEMENT, MAX_PEM_BYTES, SIGNATURE, hashing_config
from job.core.bounded import read_bounded
from job.core.errors import ConfigError, ModelFileError, SignatureInvalid

MAX_BUNDLE_BYTES = 4 << 20  # a bundle lists a handful of files; a certificate chain is a few KiB
MAX_ENTRIES = 64  # files of one version: model, sidecar, card, the two signatures


@dataclass(frozen=True)
class Trust:
    """Whom to believe: the publisher's public key, or the CA certificates a signing certificate must chain to."""

    public_key: Path | None = None
    certificate_chain: tuple[Path, ...] = ()

    def verifier(self) -> Any:
        from model_signing._signing import sign_certificate, sign_ec_key

        option = "--public-key" if self.public_key is not None else "--cert-chain"
        for path in [self.public_key] if self.public_key is not None else self.certificate_chain:
            read_bounded(path, MAX_PEM_BYTES, ConfigError, f"{option} {path}")
        try:
            if self.public_key is not None:
                return sign_ec_key.Verifier(self.public_key)
            return sign_certificate.Verifier(list(self.certificate_chain))
        except (ValueError, TypeError):
            raise ConfigError(f"{option}: not a PEM ECDSA public key (P-256, P-384, P-521) or PEM certificates") from None


@dataclass(frozen=True)
class Verified:
    directory: Path
    model_sha256: str
    gate: dict[str, Any]  # the signed gate record's predicate

    def summary(self) -> str:
        measured = self.gate.get("measurement", {})
        verdict = "passed" if self.gate.get("gate", {}).get("passed") else "did not pass"
        return (
            f"verified {self.directory}: every file signed, model.onnx sha256 {self.model_sha256[:12]}; gate {verdict} with accuracy "
            f"{measured.get('accuracy', float('nan')):.4f}, weighted F1 {measured.get('weighted_f1', float('nan')):.4f} "
            f"on {int(measured.get('images', 0))} test images (data {str(measured.get('dataset_fingerprint', '?'))[:12]})"
        )


def verify(path: Path, trust: Trust) -> list[Verified]:
    """Every version under `path`, each verified; the first that fails raises SignatureInvalid naming it."""
    verifier = trust.verifier()
    found = list(_versions_under(path))
    if not found:
        raise SignatureInvalid(f"signature of {path}: no published version here (a version, model or repository directory)")
    return [_verify_version(directory, verifier) for directory in found]


def _versions_under(path: Path) -> Iterator[Path]:
    if not path.is_dir() or path.is_symlink():
        raise SignatureInvalid(f"signature of {path}: not a directory")
    if (path / repository.MODEL_FILE).exists() or os.path.lexists(path / SIGNATURE):
        yield path
    elif (path / CONFIG_FILE).exists() or repository.versions(path):
        yield from (path / str(version) for version in repository.versions(path))
    else:
        for model_dir in sorted(entry for entry in path.iterdir() if not entry.name.startswith(".") and entry.is_dir()):
            yield from (model_dir / str(version) for version in repository.versions(model_dir))


def _verify_version(directory: Path, verifier: Any) -> Verified:
    where = f"signature of {directory}"
    _only_regular_files(directory, where)
    for name, what in [(SIGNATURE, "unsigned"), (GATE_RECORD, "no signed gate record")]:
        if not (directory / name).exists():
            raise SignatureInvalid(f"{where}: {what} (no {name})")
    manifest = _signed_manifest(directory, verifier, where)
    actual = hashing_config().hash(directory)
    if actual != manifest:
        raise SignatureInvalid(f"{where}: {_difference(actual, manifest)}")
    statement = _signed_json(directory / GATE_RECORD, verifier, f"{where}: {GATE_RECORD}")
    model_sha256 = {d.identifier: d.digest.digest_hex for d in actual.resource_descriptors()}[repository.MODEL_FILE]
    _check_gate_statement(statement, directory, model_sha256, f"{where}: {GATE_RECORD}")
    return Verified(directory, model_sha256, statement["predicate"])


def _only_regular_files(directory: Path, where: str) -> None:
    """Refuse what the signature's hashing would follow, skip or block on: links, FIFOs, devices, subdirectories."""
    with os.scandir(directory) as entries:
        for count, entry in enumerate(entries):
            if count >= MAX_ENTRIES:
                raise SignatureInvalid(f"{where}: more than {MAX_ENTRIES} entries; a version holds a handful of files")
            if not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                raise SignatureInvalid(f"{where}: {entry.name!r} is not a regular file (a link, directory, FIFO or device)")


def _signed_json(path: Path, verifier: Any, where: str) -> dict[str, Any]:
    """The payload of a Sigstore bundle, once its signature verifies with `verifier`; parsed as JSON."""
    from model_signing._signing import sign_sigstore_pb
    from sigstore_models.bundle import v1 as bundle_pb

    raw = read_bounded(path, MAX_BUNDLE_BYTES, SignatureInvalid, where)
    try:
        bundle = bundle_pb.Bundle.from_dict(json.loads(raw))
    except Exception:  # noqa: BLE001 - pydantic, JSON and base64 errors alike mean one thing here
        raise SignatureInvalid(f"{where}: not a Sigstore bundle") from None
    try:
        payload_type, payload = verifier._verify_signed_content(sign_sigstore_pb.Signature(bundle))
        document = json.loads(payload)
    except Exception:  # noqa: BLE001 - a wrong key, a broken chain, a forged or malformed envelope
        raise SignatureInvalid(f"{where}: not signed by the trusted key or certificate chain") from None
    if payload_type != "application/vnd.in-toto+json" or not isinstance(document, dict):
        raise SignatureInvalid(f"{where}: not a signed in-toto statement")
    return document


def _signed_manifest(directory: Path, verifier: Any, where: str) -> Any:
    """The files and digests SIGNATURE vouches for."""
    from model_signing._signing import signing as payloads

    statement = _signed_json(directory / SIGNATURE, verifier, f"{where}: {SIGNATURE}")
    try:
        return payloads.dsse_payload_to_manifest(statement)
    except Exception:  # noqa: BLE001 - another predicate (a gate record in its place), or a malformed one
        raise SignatureInvalid(f"{where}: {SIGNATURE} is not a model signature") from None


def _difference(actual: Any, signed: Any) -> str:
    """Which files differ from what was signed: changed, added, removed (names only, sorted)."""
    now = {d.identifier: d.digest.digest_hex for d in actual.resource_descriptors()}
    then = {d.identifier: d.digest.digest_hex for d in signed.resource_descriptors()}
    parts = [
        f"{what} {', '.join(sorted(names))}"
        for what, names in [
            ("changed", {n for n in now.keys() & then.keys() if now[n] != then[n]}),
            ("added", now.keys() - then.keys()),
            ("removed", then.keys() - now.keys()),
        ]
        if names
    ]
    return "files differ from what was signed: " + "; ".join(parts)


def _check_gate_statement(statement: dict[str, Any], directory: Path, model_sha256: str, where: str) -> None:
    subjects, predicate = statement.get("subject"), statement.get("predicate")
    if statement.get("_type") != IN_TOTO_STATEMENT or statement.get("predicateType") != GATE_PREDICATE or not isinstance(predicate, dict):
        raise SignatureInvalid(f"{where}: not a gate statement")
    digests = [s.get("digest", {}).get("sha256") for s in subjects if isinstance(s, dict)] if isinstance(subjects, list) else []
    if digests != [model_sha256]:
        raise SignatureInvalid(f"{where}: about another model.onnx (its subject is not this file's sha256)")
    model, name, version = predicate.get("model"), directory.parent.name, directory.name
    if not isinstance(model, dict) or model.get("name") != name or not version.isdigit() or model.get("version") != int(version):
        raise SignatureInvalid(f"{where}: made for another model name or version, not {name} version {version}")
