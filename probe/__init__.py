"""probe: look inside character-level LSTM language models, one cell at a time."""
from .errors import ProbeError
from .model import CharLSTM, load_model

__all__ = ["ProbeError", "CharLSTM", "load_model"]
__version__ = "0.1.0"
from .recording import Recording, open_recording  # noqa: E402

__all__ += ["Recording", "open_recording"]
