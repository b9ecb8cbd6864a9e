"""Runs: scoring one model over a corpus window by window (scoring.py, runner.py), resumable shards and the stored
per-token and per-document files (shards.py, store.py), the paired pass (paired.py), a comparison of several models
under several configurations (comparison.py), and what keeps a run going or stops it cleanly (prefetch.py,
progress.py, interrupts.py). The orchestration: it uses every part below it.

May import: foundation, formats, data, engine, analysis, report.
"""
