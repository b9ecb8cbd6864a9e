"""Statistics from the stored files alone, into results.json: per-document comparisons (documents.py), positions and
leakage (positions.py), the document bootstrap (bootstrap.py), summaries (stats.py), where the difference comes from
(explanation.py, attribution.py, divergence.py, calibration.py, textclass.py), the float32 check (precision.py) and
the findings in words (findings.py, explanation_findings.py, chat_findings.py, by wording.py's rules), assembled by
results.py. No torch: `lossgap report` rebuilds results.json
without it.

May import: foundation, formats.
"""
