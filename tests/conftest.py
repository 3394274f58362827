"""Tiny artifacts shared by the tests: a small text, a few-hundred-parameter model, a recording."""
from __future__ import annotations

import pytest
import torch

from probe import corpus
from probe.model import CharLSTM, save_checkpoint

torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared 2-core machine

TEXT = '''def greet(name):
    """Say hello (politely)."""
    # a comment with "quotes" and (brackets)
    return f"hello, {name}!" + ('x' * 3)


class Point:
    def __init__(self, x, y=[1, (2, 3)]):
        self.x, self.y = x, y
'''


@pytest.fixture
def text() -> str:
    return TEXT


@pytest.fixture
def tiny_model() -> CharLSTM:
    torch.manual_seed(0)
    model = CharLSTM(corpus.build_vocab(TEXT), layers=2, units=8, embedding=4)
    with torch.no_grad():  # larger weights than the default init, so gates move visibly
        for p in model.lstm.parameters():
            p.mul_(3)
    return model.eval()


@pytest.fixture
def model_path(tiny_model, tmp_path):
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, tiny_model, {"kind": "text", "fingerprint": corpus.fingerprint(TEXT)})
    return path


@pytest.fixture
def recording_path(model_path, tmp_path):
    from probe.model import load_model
    from probe.record import record
    out = tmp_path / "tiny.h5"
    docs = [("a.py", TEXT), ("b.py", TEXT.replace("Point", "Line") * 2)]
    record(load_model(model_path), docs, out, dtype="float32", progress=False)
    return out
