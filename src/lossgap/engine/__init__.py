"""A model and its execution: loading with clear errors (model.py, modelfiles.py), devices and dtypes (devices.py),
execution plans and their masks and kernels (plans.py, masks.py, varlen.py), the output head and its statistics over
vocabulary tiles (head.py, headstats.py), the forward layer (forward.py), the start-up checks (probe.py,
compiled.py, tolerances.py), batch sizing and memory (batching.py, memory.py), torchrun (dist.py) and the preparation
that ties them together (prepare.py). It scores batches; it does not know about runs, files or reports.

May import: foundation, formats, data.
"""
