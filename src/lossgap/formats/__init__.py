"""The on-disk contracts of a run and a comparison, and nothing that computes them: the per-token columns
(columns.py), the JSON schema and its accessors (schema.py), every file and folder name with checked readers
(paths.py), and writes that are complete or absent (files.py). No torch: `lossgap report` reads through these.

May import: foundation.
"""
