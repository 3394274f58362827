"""Stage 3, recording: a model + text → an HDF5 recording of every layer's streams, and back.

``record`` runs the model and writes, from ``layers`` (every layer's streams at every
step), ``blocks`` (feeding the text in blocks) and ``chunks`` (compressed chunk writing);
``h5format`` is the on-disk layout (paths, compression, checksums); ``reader`` opens a
recording (``open_recording``): a file (``h5file.Recording``) or a folder of shards
(``shards``; ``sharding`` cuts a text into shards), both a ``base.Reader``; ``derived``
stores streams computed from a recording (directions, dictionary codes, n-gram advantage)
beside it, each kind computed as ``transforms`` says.
"""
