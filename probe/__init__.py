"""probe: look inside character-level LSTM language models, one cell at a time.

Reading a recording does not import torch: ``CharRNN``, ``load_model``, ``run`` (the
forward pass with hook points, ``probe.lm.recurrence.run``) and ``adapt`` (your own model,
``probe.lm.adapt``) load it on first use.
"""
from probe.errors import ProbeError
from probe.recording.reader import Recording, open_recording

__all__ = ["ProbeError", "CharRNN", "load_model", "run", "adapt", "Recording", "open_recording"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("CharRNN", "load_model"):
        from probe.lm import model
        return getattr(model, name)
    if name == "adapt":  # bring your own model
        from probe.lm import adapt
        return adapt.adapt
    if name == "run":  # the forward pass with hook points
        from probe.lm import recurrence
        return recurrence.run
    raise AttributeError(f"module 'probe' has no attribute {name!r}")
