"""Builds probe's one compiled loop (probe/_kernels.c); everything else is in pyproject.toml.

The extension is optional: without a C compiler probe installs anyway and
probe.analysis.detectors counts its AUC histograms with numpy (the same numbers, slower).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("probe._kernels", ["probe/_kernels.c"],
                             extra_compile_args=["-O3", "-ffp-contract=off"], optional=True)])
