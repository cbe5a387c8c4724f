"""The `config` part of the chart's values.schema.json, generated from job/config/settings.py's model.

Helm checks values against the schema before it renders anything, so a mistyped key, a wrong
type or an out-of-range value in `config` fails `helm install` and `helm lint` instead of the
pod (exit 2). The rest of the file is hand-written; `python -m tests.generate` rewrites only
`properties.config` (a test fails while it is stale).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from job.config.settings import Config

SCHEMA = Path(__file__).resolve().parents[2] / "charts" / "cifar-job" / "values.schema.json"
DESCRIPTION = "cifar-job's YAML config (job/config/settings.py), stored in a ConfigMap; empty: the reference recipe."
# Keys the chart sets itself through the container's CIFAR_JOB_* variables (templates/job.yaml),
# which would win over the ConfigMap: refused here, so no one sets them in vain.
CHART_SETS = {
    "out": "storage.mountPath",
    "data.cache_dir": "storage.mountPath",
    "publish.root": "storage.mountPath",
    # Files from the Secret signing.secretName: a key in a ConfigMap (or a path to nothing mounted) is refused.
    "publish.signing_key": "signing.secretName",
    "publish.signing_certificate": "signing.certificateKey",
    "publish.certificate_chain": "signing.chainKey",
    "metrics.port": "metrics.port",
    "metrics.address": "the pod layout (0.0.0.0)",
}
# What each section is for, until its class in job/config/settings.py has a docstring (which then wins).
SECTION_DESCRIPTIONS = {
    "data": "CIFAR-10 source and split.",
    "model": "Architecture.",
    "train": "Training recipe.",
    "export": "ONNX export and parity check.",
    "validate": "onnxruntime validation.",
    "gate": "Quality gate.",
    "publish": "Serving repository.",
    "metrics": "Prometheus metrics and Pushgateway.",
}
# pydantic's output that the schema does without: titles repeat the key, defaults live in the model,
# `required` does not hold for a partial config, $defs are inlined, and "path" is no JSON-schema format.
_DROPPED = {"title", "default", "required", "$defs"}
_KEY_ORDER = ("type", "description", "enum", "const", "pattern", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum",
              "anyOf", "additionalProperties", "properties", "not")


def config_schema() -> dict[str, Any]:
    """The model's JSON schema as Helm's draft-07 engines read it: inline, partial, described."""
    model = Config.model_json_schema(by_alias=True)
    schema = _plain(model, model.get("$defs", {}))
    schema["description"] = DESCRIPTION
    for name, node in schema["properties"].items():
        node.setdefault("description", SECTION_DESCRIPTIONS.get(name))
    for key, source in CHART_SETS.items():
        *section, leaf = key.split(".")
        node = schema["properties"][section[0]] if section else schema
        if leaf not in node["properties"]:
            raise ValueError(f"CHART_SETS names {key}, which job/config/settings.py no longer has: update it and templates/job.yaml")
        node["properties"][leaf] = {"description": f"Set by the chart from {source}; not allowed here.", "not": {}}
    undescribed = [name for name, node in schema["properties"].items() if not node.get("description")]
    if undescribed:
        raise ValueError(f"job/config/settings.py: give {', '.join(undescribed)} a description (a docstring or Field(description=...))")
    return _ordered(schema)


def _plain(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with every `$ref` inlined and pydantic's extras dropped."""
    if isinstance(node, list):
        return [_plain(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    kept = {k: _plain(v, defs) for k, v in node.items() if k not in _DROPPED and k != "properties" and (k, v) != ("format", "path")}
    if "properties" in node:  # a map of field names, not of keywords
        kept["properties"] = {name: _plain(field, defs) for name, field in node["properties"].items()}
    return kept


def _ordered(node: Any) -> Any:
    """Keywords in the order the hand-written part uses (type and description first); fields in the model's order."""
    if isinstance(node, list):
        return [_ordered(item) for item in node]
    if not isinstance(node, dict):
        return node
    rank = {key: i for i, key in enumerate(_KEY_ORDER)}
    ordered = {k: _ordered(v) for k, v in sorted(node.items(), key=lambda item: rank.get(item[0], len(rank))) if k != "properties"}
    if "properties" in node:
        ordered["properties"] = {name: _ordered(field) for name, field in node["properties"].items()}
    return ordered


def render(text: str) -> str:
    """values.schema.json's text with `properties.config` generated anew, the rest as it was."""
    schema = json.loads(text)
    schema["properties"]["config"] = config_schema()
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"

