"""Build-time tools of the lossgap repository: run from the repository root, never shipped in the wheel."""
