"""Stage 6, read-outs over many cells: a recording → probes, directions, a sparse dictionary.

``probes`` fits one linear probe per feature and layer on the top-k cells; ``directions``
fits a direction per feature over many cells (``ridge``: the streamed closed form;
``linear``: the spec checked and applied) and ``ablation`` measures what removing one
costs; ``dictionary`` trains a top-k sparse dictionary whose features are unsupervised
directions (``autoencoder``: the model and its step; ``loss_recovered``: what the model
loses when the stream is rebuilt from it). ``rows`` holds the held-out splits and the
sampled reads they all share. A read-out is saved as a derived-stream spec
(``probe.recording.derived``).
"""
