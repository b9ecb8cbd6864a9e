"""The report as a pure function of results.json: its sections (build.py), tables (tables.py,
explanation_tables.py), the explanation section and token view (explanation.py), figures (figures.py: the one
registry; plots.py, explanation_plots.py) and the Markdown, HTML and CSV renderings (render.py). No torch.

May import: foundation, formats.
"""
