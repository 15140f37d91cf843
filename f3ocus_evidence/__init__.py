"""The evidence runner: the paper's comparison grid (``f3ocus-compare``) and its tables and figures.

A room of its own because it drives both apps: each cell of the grid is one run of the project's
ServerApp over in-process ClientApps (:mod:`f3ocus_evidence.inprocess`), run by
:mod:`f3ocus_evidence.compare`, then read into the table and figures of :mod:`f3ocus_evidence.results`.
Neither app nor :mod:`f3ocus_flower` imports this package (``tests/test_layering.py``).
"""
