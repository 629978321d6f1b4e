"""Reads an OpenMetrics (or Prometheus text) exposition on stdin with the official Python
client's parser, and prints its samples as JSON: [[name, {labels}, value], …]. For
tests/metrics.rs: a parser nobody here wrote decides whether our /metrics is valid."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

text = sys.stdin.read()
samples = []
for family in text_string_to_metric_families(text):
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
print(json.dumps(samples))
