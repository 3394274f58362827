"""Stage 5, analysis: a recording → per-cell scores and tables (pandas).

``detectors`` scores every cell against every feature (r, AUC) in one pass; ``summaries``
holds per-unit statistics (saturation, top contexts); ``cache`` keeps a recording's
analysis beside it; ``contexts`` finds a cell's top contexts; ``match`` is select & match;
``advantage`` compares the model with an n-gram baseline; ``cluster`` runs record and
analysis on Dask.
"""
