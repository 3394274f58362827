"""The compiled inner loops (``probe/_kernels.c``, built by setup.py), or None.

They are optional: without a compiler at install time every caller does the same work in
numpy (the reference the tests compare them with)."""
try:
    from probe import _kernels as kernels
except ImportError:  # no compiler at install time
    kernels = None
