#!/usr/bin/env python3
"""Print every metric name the PromQL expressions of the given files refer to: sorted, unique, one a line.

    scripts/metric-names.py deploy/grafana/teltonika-ingest.json deploy/prometheus/alerts.yml

Expressions: in .json files (Grafana dashboards) every "expr" member at any depth; in .yml/.yaml files
(Prometheus rule files, every YAML document) every "expr" key at any depth. A name is a match of
(teltonika|process)_[a-z0-9_]+ that is not part of a longer identifier. A trailing _bucket, _sum or _count
is always removed, so a histogram's series count as its base name (teltonika_ack_latency_seconds); no
metric of this server ends in those words otherwise, so the simple rule is exact here.
Exit 0 with the names; 2 on usage errors or a file that cannot be read or parsed.
Needs PyYAML for YAML files (Debian: python3-yaml).
"""
import json
import re
import sys

NAME = re.compile(r"(?<![A-Za-z0-9_:])(?:teltonika|process)_[a-z0-9_]+")
HISTOGRAM_SUFFIX = re.compile(r"_(?:bucket|sum|count)$")


def exprs(node):
    """Every string value of an "expr" key, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)


def documents(path):
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            return [json.load(f)]
        if path.endswith((".yml", ".yaml")):
            import yaml  # only needed for YAML files

            return list(yaml.safe_load_all(f))
    raise ValueError("not a .json, .yml or .yaml file")


def metric_names(expr):
    return {HISTOGRAM_SUFFIX.sub("", m) for m in NAME.findall(expr)}


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    names = set()
    for path in argv[1:]:
        try:
            docs = documents(path)
        except Exception as e:  # noqa: BLE001 - any read or parse error is a usage error here
            print(f"metric-names.py: {path}: {e}", file=sys.stderr)
            return 2
        for doc in docs:
            for expr in exprs(doc):
                names |= metric_names(expr)
    for name in sorted(names):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
