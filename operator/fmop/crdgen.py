"""Generate CustomResourceDefinitions from the pydantic API types.

    python -m fmop.crdgen              # write crds/*.yaml and charts/fm-operator/crds/*.yaml
    python -m fmop.crdgen --check      # exit 1 and show a diff when the committed files drift

pydantic emits JSON Schema (2020-12) with $refs, anyOf-for-Optional and numeric exclusive bounds;
Kubernetes wants a *structural* OpenAPI v3 schema: everything inlined, one type per node,
boolean exclusive bounds, no `additionalProperties: false`. `structural()` does that translation.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue

from fmop.api import GROUP, KINDS, VERSION
from fmop.api.common import CATEGORY, CustomResource

# Keys of JSON Schema that a CRD schema cannot carry (or that add nothing there).
_DROP = {"title", "examples", "$defs", "discriminator"}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a $ref, letting the referring node's own keys (description, default) win."""
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    merged = {**_resolve(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}
    return merged


def structural(node: Any, defs: dict[str, Any]) -> Any:
    """Translate one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    if isinstance(node, list):
        return [structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = _resolve(node, defs)

    if "anyOf" in node:
        options = [_resolve(o, defs) for o in node["anyOf"]]
        non_null = [o for o in options if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("x-kubernetes-int-or-string"):
            node = rest
        elif len(non_null) == 1:
            # Optional[X]: the field may be left out; an explicit null is not part of our API.
            node = {**non_null[0], **rest}
            if node.get("default", ...) is None:
                del node["default"]
        else:
            types = sorted(o.get("type", "?") for o in non_null)
            if types == ["integer", "string"]:
                node = {**rest, "x-kubernetes-int-or-string": True}
            else:
                raise ValueError(f"cannot express anyOf {types} in a structural schema")
        return structural(node, defs)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "additionalProperties" and value is False:
            continue  # unknown fields are pruned or, with strict field validation, rejected
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = structural(value, defs)
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


class _Generator(GenerateJsonSchema):
    """pydantic leaves default_factory values out of the schema; we want them in, so the API
    server fills in whole sections (and `kubectl get -o yaml` shows the effective spec). Unset
    optional fields are left out rather than written as null, which a CRD does not accept."""

    def default_schema(self, schema: Any) -> JsonSchemaValue:
        if "default_factory" in schema and not schema.get("default_factory_takes_data"):
            schema = {k: v for k, v in schema.items() if k != "default_factory"} | {"default": schema["default_factory"]()}
        return super().default_schema(schema)

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, BaseModel):
            return dft.model_dump(mode="json", exclude_none=True)
        if isinstance(dft, list):
            return [self.encode_default(x) for x in dft]
        return super().encode_default(dft)


def openapi_schema(kind: type[CustomResource]) -> dict[str, Any]:
    """The openAPIV3Schema of one kind."""
    full = kind.model_json_schema(mode="validation", ref_template="#/$defs/{model}", schema_generator=_Generator)
    defs = full.get("$defs", {})
    spec = structural(full["properties"]["spec"], defs)
    status = structural(full["properties"]["status"], defs)
    return {
        "type": "object",
        "description": (kind.__doc__ or "").strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd(kind: type[CustomResource]) -> dict[str, Any]:
    info = kind.info
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "fm-operator"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": info.shortNames,
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": info.printerColumns,
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                }
            ],
        },
    }


HEADER = "# Generated by `python -m fmop.crdgen` from operator/fmop/api. Do not edit by hand.\n"


class _PlainDumper(yaml.SafeDumper):
    """A type used in two places inlines the same dict twice; write it out twice, not as a YAML anchor and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(kind: type[CustomResource]) -> str:
    return HEADER + yaml.dump(crd(kind), Dumper=_PlainDumper, sort_keys=False, width=120)


def targets(root: Path) -> dict[Path, str]:
    """Every generated file and its content: crds/ and the chart's crds/ folder."""
    files: dict[Path, str] = {}
    for kind in KINDS:
        name = f"{GROUP}_{kind.info.plural}.yaml"
        text = render(kind)
        files[root / "crds" / name] = text
        files[root / "charts" / "fm-operator" / "crds" / name] = text
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2], help="repository root")
    parser.add_argument("--check", action="store_true", help="fail if the files on disk differ")
    args = parser.parse_args(argv)
    drift = False
    for path, text in targets(args.root).items():
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if args.check:
            drift = True
            rel = path.relative_to(args.root)
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True), f"{rel} (committed)", f"{rel} (generated)"))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(args.root)}")
    if drift:
        print("\nCRDs are out of date with operator/fmop/api: run `make crds` and commit the result.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
