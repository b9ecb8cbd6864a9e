"""The schema of lossgap's JSON files: results.json, compare.json and summary.json share one version number."""

from __future__ import annotations

SCHEMA_VERSION = 1
