"""Stage 5, analysis: a recording → per-cell scores and tables (pandas).

``detectors`` scores every cell against every feature (r, AUC) in one pass, from its parts:
``featureset`` (the features as the scan needs them), ``loops`` (the per-value inner loops,
compiled or numpy), ``stats`` (a part's sufficient statistics, folded in shard order),
``threads`` (one torch thread while scanning), ``progress`` (the bar), ``ranking`` (best
cells per feature) and ``metrics`` (exact AUC and r). ``summaries`` holds per-unit
statistics built in the same scan (histogram, top contexts by ``topk``, overview strip);
``cache`` keeps a recording's analysis beside it; ``contexts`` finds a cell's top
contexts; ``match`` is select & match; ``advantage`` compares the model with an n-gram
baseline; ``cluster`` runs record and analysis on Dask.
"""
