"""probe: look inside character-level LSTM language models, one cell at a time.

Reading a recording does not import torch: ``CharRNN`` and ``load_model`` (and the
modules that run a model) load it on first use.
"""
from probe.errors import ProbeError
from probe.recording.reader import Recording, open_recording

__all__ = ["ProbeError", "CharRNN", "load_model", "Recording", "open_recording"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("CharRNN", "load_model"):
        from probe.lm import model
        return getattr(model, name)
    raise AttributeError(f"module 'probe' has no attribute {name!r}")
