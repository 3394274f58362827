"""Stage 6, read-outs over many cells: a recording → probes, directions, a sparse dictionary.

``probes`` fits one linear probe per feature and layer; ``directions`` fits a direction per
feature over a layer's units and measures what ablating it costs; ``dictionary`` trains a
top-k sparse dictionary whose features are unsupervised directions.
"""
