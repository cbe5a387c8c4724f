"""A strict JSON Schema for KServe's InferenceService, built from KServe's own API types on PyPI.

No registry package ships KServe's CRD YAML (config/crd/full/serving.kserve.io_inferenceservices.yaml
lives only in KServe's repository and release assets). The kserve Python SDK on PyPI ships the same
API as generated models: kserve/models/v1beta1_*.py, made by openapi-generator from KServe's OpenAPI
document, which is generated from the Go types the CRD is generated from. Each model lists its fields
(`openapi_types`, `attribute_map`: JSON name and type) and checks its required ones ("Invalid value
for `x`, must not be `None`"). This module turns them into a JSON Schema with
`additionalProperties: false` everywhere, so a misspelt or misplaced field fails, as the API server's
structural-schema pruning would drop it. Kubernetes types (V1Container, V1ObjectMeta, ...) come the
same way from the `kubernetes` client package the project already depends on.

The wheel (pinned by version and sha256) is read as a zip, never imported: importing kserve pulls its
model server. It is downloaded once into .cache/pypi; the first run needs PyPI.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import re
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes.client

ROOT = Path(__file__).resolve().parents[1]
KSERVE_VERSION = "0.21.0"
KSERVE_WHEEL = f"kserve-{KSERVE_VERSION}-py3-none-any.whl"
KSERVE_WHEEL_SHA256 = "df9bc5888704d9085015e08f1a8fced5ff0698f3becc6212d4e7b8234c71623b"
CACHE = ROOT / ".cache" / "pypi"
_REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")
_SCALARS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "object": {},  # IntOrString, RawExtension: anything
    "datetime": {"type": "string"},
    "date": {"type": "string"},
    "bytes": {"type": "string"},
}


def kserve_wheel() -> Path:
    """The pinned kserve wheel in .cache/pypi, downloaded (hash-checked by pip) when missing."""
    wheel = CACHE / KSERVE_WHEEL
    if not (wheel.is_file() and hashlib.sha256(wheel.read_bytes()).hexdigest() == KSERVE_WHEEL_SHA256):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "--require-hashes", "-d", str(CACHE), "-r", "/dev/stdin"],
                       input=f"kserve=={KSERVE_VERSION} --hash=sha256:{KSERVE_WHEEL_SHA256}\n",
                       text=True, check=True, capture_output=True, timeout=600)
    return wheel


def _fields(source: str) -> dict[str, tuple[dict[str, str], dict[str, str], set[str]]]:
    """class name -> (openapi_types, attribute_map, required attribute names) of one generated module."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            assigns = {t.id: ast.literal_eval(s.value) for s in node.body if isinstance(s, ast.Assign)
                       for t in s.targets if isinstance(t, ast.Name) and t.id in ("openapi_types", "attribute_map")}
            if "openapi_types" in assigns:
                found[node.name] = (assigns["openapi_types"], assigns["attribute_map"],
                                    set(_REQUIRED.findall(ast.get_source_segment(source, node) or "")))
    return found


@cache
def _kserve_models() -> dict[str, tuple[dict[str, str], dict[str, str], set[str]]]:
    models = {}
    with zipfile.ZipFile(kserve_wheel()) as wheel:
        for name in wheel.namelist():
            if name.startswith("kserve/models/") and name.endswith(".py"):
                models.update(_fields(wheel.read(name).decode()))
    return models


# Types that kserve's models name but neither package defines (V1beta1MetricQuantity, a Go type
# that marshals as a number or string): accepted as anything. The InferenceService here uses none.
UNTYPED: set[str] = set()


def _model(name: str) -> tuple[dict[str, str], dict[str, str], set[str]] | None:
    kserve = _kserve_models()
    if name in kserve:
        return kserve[name]
    # A Kubernetes type: same generator, same layout. kserve's OpenAPI document names a few by their
    # Go package (K8sIoApiAutoscalingV2HorizontalPodAutoscalerBehavior), the client by version and kind.
    cls = getattr(kubernetes.client, re.sub(r"^K8sIoApi[A-Z][a-z]+(?=V\d)", "", name), None)
    if cls is None:
        UNTYPED.add(name)
        return None

    # kubernetes 37's models are pydantic (required: fields without a default); older ones check in code.
    fields = getattr(cls, "model_fields", None)
    if fields:
        required = {name for name, field in fields.items() if field.is_required()}
    else:
        required = set(_REQUIRED.findall(inspect.getsource(cls)))
    return cls.openapi_types, cls.attribute_map, required & cls.openapi_types.keys()


def _type(spec: str, defs: dict[str, Any]) -> dict[str, Any]:
    if spec in _SCALARS:
        return dict(_SCALARS[spec])
    # kserve's generator writes list[X] and dict(str, X); the kubernetes client's, List[X] and Dict[str, X].
    if match := re.fullmatch(r"[lL]ist\[(.+)\]", spec):
        return {"type": "array", "items": _type(match.group(1), defs)}
    if match := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", spec):
        return {"type": "object", "additionalProperties": _type(match.group(1) or match.group(2), defs)}
    if spec not in defs:
        defs[spec] = {}  # placeholder: types refer to each other (JSONSchemaProps, ...)
        model = _model(spec)
        if model is None:
            return defs[spec]
        types, names, required = model
        defs[spec] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {names[attr]: _type(kind, defs) for attr, kind in types.items()},
            **({"required": sorted(names[attr] for attr in required)} if required else {}),
        }
    return {"$ref": f"#/$defs/{spec}"}


@cache
def inference_service_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a serving.kserve.io/v1beta1 InferenceService."""
    defs: dict[str, Any] = {}
    root = _type("V1beta1InferenceService", defs)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs, **root}
    top = defs["V1beta1InferenceService"]
    top["properties"]["apiVersion"] = {"const": "serving.kserve.io/v1beta1"}
    top["properties"]["kind"] = {"const": "InferenceService"}
    top["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return schema
