"""Signed versions: OpenSSF model signing over every file of a version, a signed record of the gate's measurement, and
`cifar-job verify` refusing every tampering a writer of the repository could try, with keys and a CA made here."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from export.repository import read_sidecar, versions
from export.signing import GATE_RECORD, SIGNATURE
from job.cli import main

from .test_publish import KILLER
from .test_published_version import NO_GATE, _args, models, runs  # noqa: F401 - the two measured models and their run directories

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

MODEL_SIGNING = Path(sys.executable).with_name("model_signing")  # the upstream command line, beside this interpreter


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def _pem_public(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def _certificate(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
        key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """A publisher's P-256 key pair, an attacker's, and a small CA: root -> intermediate -> the publisher's leaf certificate."""
    d = tmp_path_factory.mktemp("keys")
    publisher, attacker = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_key, intermediate_key, leaf_key = (ec.generate_private_key(ec.SECP384R1()) for _ in range(3))
    root = _certificate("test root CA", root_key, "test root CA", root_key, ca=True)
    intermediate = _certificate("test intermediate CA", intermediate_key, "test root CA", root_key, ca=True)
    leaf = _certificate("cifar-job publisher", leaf_key, "test intermediate CA", intermediate_key, ca=False)
    other_root_key = ec.generate_private_key(ec.SECP384R1())
    other_root = _certificate("another root CA", other_root_key, "another root CA", other_root_key, ca=True)
    for name, certificate in {"root": root, "intermediate": intermediate, "leaf": leaf, "other_root": other_root}.items():
        (d / f"{name}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return {
        "key": _pem_key(publisher, d / "key.pem"), "pub": _pem_public(publisher, d / "pub.pem"),
        "attacker_key": _pem_key(attacker, d / "attacker.pem"), "attacker_pub": _pem_public(attacker, d / "attacker.pub.pem"),
        "leaf_key": _pem_key(leaf_key, d / "leaf.key"), "rsa_key": _pem_key(rsa.generate_private_key(65537, 2048), d / "rsa.pem"),
        **{name: d / f"{name}.crt" for name in ("root", "intermediate", "leaf", "other_root")},
    }  # fmt: skip


def _signed(keys: dict[str, Path]) -> list[str]:
    return ["--set", f"publish.signing_key={keys['key']}"]


def _publish(run: Path, root: Path, *extra: str):
    return CliRunner().invoke(main, ["publish", *_args(run, root, *NO_GATE, *extra)])


def _verify(path: Path, *trust: str):
    return CliRunner().invoke(main, ["verify", str(path), *trust])


def _upstream(version_dir: Path, *trust: str) -> subprocess.CompletedProcess[str]:
    """The OpenSSF model_signing command line, knowing nothing of cifar-job."""
    command = [str(MODEL_SIGNING), "verify", *trust[:1], str(version_dir), "--signature", str(version_dir / SIGNATURE), *trust[1:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture
def signed_repository(runs: dict[str, Path], keys: dict[str, Path], tmp_path: Path) -> Path:  # noqa: F811
    """Versions 1 (good) and 2 (worse) of cifar10-cnn, both signed with the publisher's key."""
    root = tmp_path / "models"
    for name in ("good", "worse"):
        result = _publish(runs[name], root, *_signed(keys))
        assert result.exit_code == 0, result.output
    return root


def test_a_signed_version_verifies_upstream_and_here_and_its_gate_record_is_what_publish_measured(signed_repository: Path, keys) -> None:
    version = signed_repository / "cifar10-cnn" / "1"
    assert sorted(p.name for p in version.iterdir()) == sorted([GATE_RECORD, "metadata.json", "model.onnx", "model_card.md", SIGNATURE])
    upstream = _upstream(version, "key", "--public_key", str(keys["pub"]))
    assert upstream.returncode == 0 and "Verification succeeded" in upstream.stdout, upstream.stdout + upstream.stderr

    result = _verify(signed_repository, "--public-key", str(keys["pub"]))
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [f"verified {signed_repository}/cifar10-cnn/{v}" for v in (1, 2)]

    from export.verification import Trust, verify

    (verified,) = verify(version, Trust(public_key=keys["pub"]))
    sidecar = read_sidecar(version)
    measured = verified.gate["measurement"]
    assert verified.model_sha256 == sidecar["sha256"] == hashlib.sha256((version / "model.onnx").read_bytes()).hexdigest()
    assert {k: measured[k] for k in ("accuracy", "weighted_f1", "macro_f1")} == {k: sidecar["metrics"][k] for k in ("accuracy", "weighted_f1", "macro_f1")}
    assert measured["images"] == 10_000 and measured["dataset_fingerprint"] == sidecar["provenance"]["dataset_fingerprint"]
    assert verified.gate["gate"] == sidecar["gate"] and verified.gate["gate"]["thresholds"]["min_accuracy"] == 0
    assert verified.gate["model"] == {"name": "cifar10-cnn", "version": 1, "file": "model.onnx", "variant": None}
    assert verified.gate["measured_with"]["cifar-job"] and len(verified.gate["config_sha256"]) == 64


def test_certificate_signing_verifies_against_the_root_ca_only(runs, keys, tmp_path: Path) -> None:  # noqa: F811
    root = tmp_path / "models"
    chain = ["--set", f"publish.signing_key={keys['leaf_key']}", "--set", f"publish.signing_certificate={keys['leaf']}",
             "--set", f"publish.certificate_chain={keys['intermediate']}"]  # fmt: skip
    assert _publish(runs["good"], root, *chain).exit_code == 0
    version = root / "cifar10-cnn" / "1"
    assert _verify(root, "--cert-chain", str(keys["root"])).exit_code == 0
    upstream = _upstream(version, "certificate", "--certificate_chain", str(keys["root"]))
    assert upstream.returncode == 0, upstream.stdout + upstream.stderr

    other = _verify(root, "--cert-chain", str(keys["other_root"]))
    assert other.exit_code == 16 and "not signed by the trusted key or certificate chain" in other.stderr


def _flip_a_byte(version: Path, other: Path) -> None:
    data = bytearray((version / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (version / "model.onnx").write_bytes(bytes(data))


def _resign_with(key: str):
    def resign(version: Path, other: Path, keys: dict[str, Path]) -> None:
        from export.signing import gate_statement, seal, signer
        from job.config.settings import load_config

        (version / SIGNATURE).unlink()
        statement = json.loads(__import__("base64").b64decode(json.loads((version / GATE_RECORD).read_text())["dsseEnvelope"]["payload"]))
        seal(version, signer(load_config(env={}, overrides={"publish.signing_key": str(keys[key])}).publish), statement)

    return resign


def _forge_gate_record(version: Path, other: Path, keys: dict[str, Path]) -> None:
    """The attacker rewrites the gate record with better scores and re-signs it with their own key; the model's signature stays."""
    from export.signing import gate_statement, signer
    from job.config.settings import load_config

    statement = gate_statement(read_sidecar(version)["sha256"], {"model": {"name": "cifar10-cnn", "version": 2}, "measurement": {"accuracy": 0.99}})
    signer(load_config(env={}, overrides={"publish.signing_key": str(keys["attacker_key"])}).publish).sign(
        __import__("export.signing", fromlist=["_Statement"])._Statement(statement)
    ).write(version / GATE_RECORD)


# name -> (what the attacker does to version 2, given version 1; the problem `verify` names)
TAMPERING = {
    "flip a byte of the model": (_flip_a_byte, "files differ from what was signed: changed model.onnx"),
    "append to the sidecar": (lambda v, o: (v / "metadata.json").open("a").write(" "), "changed metadata.json"),
    "swap in another version's model": (lambda v, o: shutil.copy(o / "model.onnx", v / "model.onnx"), "changed model.onnx"),
    "another version's signature": (lambda v, o: shutil.copy(o / SIGNATURE, v / SIGNATURE), "files differ from what was signed"),
    "another version's gate record": (lambda v, o: shutil.copy(o / GATE_RECORD, v / GATE_RECORD), "changed gate.sigstore.json"),
    "add a file": (lambda v, o: (v / "extra.onnx").write_bytes(b"x"), "added extra.onnx"),
    "drop the gate record": (lambda v, o: (v / GATE_RECORD).unlink(), "no signed gate record"),
    "drop the signature": (lambda v, o: (v / SIGNATURE).unlink(), "unsigned (no model.sig)"),
    "the gate record in the signature's place": (lambda v, o: shutil.copy(v / GATE_RECORD, v / SIGNATURE), "model.sig is not a model signature"),
    "a garbage signature": (lambda v, o: (v / SIGNATURE).write_text("{\"mediaType\": 1}"), "model.sig: not a Sigstore bundle"),
    "a signature nested 100,000 deep": (lambda v, o: (v / SIGNATURE).write_text("[" * 100_000), "model.sig: not a Sigstore bundle"),
    "a 5 MiB signature": (lambda v, o: (v / SIGNATURE).write_bytes(b" " * (5 << 20)), "model.sig: larger than 4194304 bytes"),
    "a link in the version": (lambda v, o: (v / "model_card.md").unlink() or (v / "model_card.md").symlink_to(o / "model_card.md"), "'model_card.md' is not a regular file"),
    "a FIFO in the version": (lambda v, o: os.mkfifo(v / "pipe"), "'pipe' is not a regular file"),
    "version 1 copied whole as version 2": (lambda v, o: shutil.rmtree(v) or shutil.copytree(o, v), "made for another model name or version, not cifar10-cnn version 2"),
}  # fmt: skip
RESIGNED = {
    "re-signed whole with another key": (_resign_with("attacker_key"), "model.sig: not signed by the trusted key or certificate chain"),
    "gate record forged with another key": (_forge_gate_record, "files differ from what was signed: changed gate.sigstore.json"),
}


@pytest.mark.parametrize("attack", [*TAMPERING, *RESIGNED])
def test_every_tampering_is_refused_with_one_line_and_exit_16(signed_repository: Path, keys, attack: str) -> None:
    v1, v2 = (signed_repository / "cifar10-cnn" / str(v) for v in (1, 2))
    if attack in TAMPERING:
        tamper, problem = TAMPERING[attack]
        tamper(v2, v1)
    else:
        tamper, problem = RESIGNED[attack]
        tamper(v2, v1, keys)
    for path in (v2, signed_repository):  # the version alone, and the repository holding it
        result = _verify(path, "--public-key", str(keys["pub"]))
        assert result.exit_code == 16, result.output
        assert result.stderr.startswith(f"cifar-job: error: signature of {v2}: ") and result.stderr.count("\n") == 1, result.stderr
        assert problem in result.stderr
    assert _verify(v1, "--public-key", str(keys["pub"])).exit_code == 0  # the untouched version still verifies


def test_the_wrong_key_an_unsigned_version_and_bad_trust_files_are_refused(runs, signed_repository: Path, keys, tmp_path: Path) -> None:  # noqa: F811
    wrong = _verify(signed_repository, "--public-key", str(keys["attacker_pub"]))
    assert wrong.exit_code == 16 and "not signed by the trusted key or certificate chain" in wrong.stderr

    unsigned_root = tmp_path / "unsigned"
    assert _publish(runs["good"], unsigned_root).exit_code == 0
    unsigned = _verify(unsigned_root, "--public-key", str(keys["pub"]))
    assert unsigned.exit_code == 16 and "unsigned (no model.sig)" in unsigned.stderr

    not_a_key = _verify(signed_repository, "--public-key", str(keys["root"]))
    assert not_a_key.exit_code == 2 and "--public-key: not a PEM ECDSA public key" in not_a_key.stderr
    both = _verify(signed_repository, "--public-key", str(keys["pub"]), "--cert-chain", str(keys["root"]))
    assert both.exit_code == 2 and "give either --public-key or --cert-chain" in both.stderr
    empty = _verify(tmp_path / "nothing-here-yet", "--public-key", str(keys["pub"]))
    assert empty.exit_code == 16 and "not a directory" in empty.stderr


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("rsa_key", "not an ECDSA key on P-256, P-384 or P-521"),
        ("root", "not a PEM private key"),
        ("missing", "cannot read"),
    ],
)
def test_an_unusable_signing_key_is_one_line_exit_2_before_anything_is_published(runs, keys, tmp_path: Path, setting: str, problem: str) -> None:  # noqa: F811
    key = keys.get(setting, tmp_path / "missing.pem")
    root = tmp_path / "models"
    result = _publish(runs["good"], root, "--set", f"publish.signing_key={key}")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("cifar-job: error: config key publish.signing_key: ") and problem in result.stderr
    assert result.stderr.count("\n") == 1 and "BEGIN" not in result.output
    assert not (root / "cifar10-cnn").exists()


def test_a_certificate_of_another_key_and_a_required_signature_without_a_key_are_refused(runs, keys, tmp_path: Path) -> None:  # noqa: F811
    mismatched = _publish(runs["good"], tmp_path / "a", "--set", f"publish.signing_key={keys['key']}", "--set", f"publish.signing_certificate={keys['leaf']}")
    assert mismatched.exit_code == 2 and "does not certify publish.signing_key" in mismatched.stderr
    required = _publish(runs["good"], tmp_path / "b", "--set", "publish.require_signature=true")
    assert required.exit_code == 2 and "config key publish.require_signature" in required.stderr
    assert not (tmp_path / "a").joinpath("cifar10-cnn").exists() and not (tmp_path / "b").joinpath("cifar10-cnn").exists()


@pytest.mark.parametrize("point", ["writing the gate record", "writing the signature", "the rename"])
def test_a_publish_killed_while_signing_leaves_a_whole_signed_version_or_none(runs, keys, tmp_path: Path, point: str) -> None:  # noqa: F811
    root = tmp_path / "models"
    event, needles = {"writing the gate record": ("open", f".staging-|{GATE_RECORD}"), "writing the signature": ("open", f".staging-|{SIGNATURE}"),
                      "the rename": ("os.rename", ".staging-")}[point]  # fmt: skip
    args = ["publish", *_args(runs["good"], root, *NO_GATE, *_signed(keys))]
    killed = subprocess.run([sys.executable, "-c", KILLER, event, needles, *args], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert versions(root / "cifar10-cnn") == []  # nothing visible: the version was still staged

    rerun = _publish(runs["good"], root, *_signed(keys))
    assert rerun.exit_code == 0, rerun.output
    assert versions(root / "cifar10-cnn") == [1] and _verify(root, "--public-key", str(keys["pub"])).exit_code == 0
    assert sorted(p.name for p in (root / "cifar10-cnn").iterdir() if p.name.startswith(".")) == [".cifar-job.json"]
