"""Stage 3, recording: a model + text → an HDF5 recording of every layer's streams, and back.

``record`` runs the model and writes; ``h5format`` is the on-disk layout (paths,
compression, checksums); ``reader`` opens a file (``Recording``, ``open_recording``);
``shards`` reads a folder of shards as one recording; ``derived`` stores streams computed
from a recording (directions, dictionary codes, n-gram advantage) beside it.
"""
