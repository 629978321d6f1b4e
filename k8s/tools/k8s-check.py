#!/usr/bin/env python3
"""Helpers for tests/k8s_*.rs, run with the venv's python (kubernetes-validate, PyYAML).

  k8s-check.py validate VERSION[,VERSION...] FILE...
      Validates every document of every FILE strictly (unknown fields rejected) against the
      Kubernetes JSON schemas of each VERSION, offline (the schemas ship in the package).
      Kinds served by CRDs (ServiceMonitor, PrometheusRule, HTTPRoute) have no schema there: they are listed
      under "crd" instead. Prints one JSON object; exit 1 if any document failed.
  k8s-check.py json FILE...
      Prints the documents of the FILEs as one JSON array (for tests without a YAML crate).
"""
import json
import sys

import kubernetes_validate
import yaml

CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}


def docs(files):
    out = []
    for f in files:
        with open(f) as fh:
            for d in yaml.safe_load_all(fh):
                if d:
                    out.append((f, d))
    return out


def validate(versions, files):
    result = {"versions": versions, "documents": 0, "validations": 0, "crd": [], "errors": []}
    for f, d in docs(files):
        result["documents"] += 1
        name = f"{f}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if (d.get("apiVersion"), d.get("kind")) in CRD_KINDS:
            result["crd"].append(name)
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(d, v, strict=True)
                result["validations"] += 1
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                result["errors"].append(f"{name} (k8s {v}): {path}: {e.message}")
            except Exception as e:  # no schema for the kind, unparsable schema
                result["errors"].append(f"{name} (k8s {v}): {e}")
    print(json.dumps(result, indent=1))
    return 1 if result["errors"] else 0


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "validate":
        return validate(args[0].split(","), args[1:])
    if cmd == "json":
        print(json.dumps([d for _, d in docs(args)]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
