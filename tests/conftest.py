"""Tiny artifacts shared by the tests: a small text, a few-hundred-parameter model, a recording,
and synthetic recordings with planted cells (no model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.lm.model import CharRNN, save_checkpoint
from probe.recording import h5format
from probe.text import corpus, features

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
def tiny_model() -> CharRNN:
    torch.manual_seed(0)
    model = CharRNN(corpus.build_vocab(TEXT), layers=2, units=8, embedding=4)
    with torch.no_grad():  # larger weights than the default init, so gates move visibly
        for p in model.rnn.parameters():
            p.mul_(3)
    return model.eval()


@pytest.fixture
def model_path(tiny_model, tmp_path):
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, tiny_model, {"kind": "text", "fingerprint": corpus.fingerprint(TEXT)})
    return path


@pytest.fixture
def recording_path(model_path, tmp_path):
    from probe.lm.model import load_model
    from probe.recording.record import record
    out = tmp_path / "tiny.h5"
    docs = [("a.py", TEXT), ("b.py", TEXT.replace("Point", "Line") * 2)]
    record(load_model(model_path), docs, out, dtype="float32", progress=False)
    return out


STREAMS = ("i", "f", "g", "o", "c", "h")
CODE = '''def f(a, b=[1, (2, 3)]):
    """Add things."""  # a comment
    s = 'x' + "y"
    return {a: b}  # (done)
'''


def write_recording(path, text, data, documents=None, streams=STREAMS, dtype="float32"):
    """A recording with ``data[(layer, stream)]`` = [T, units] arrays (missing ones random)."""
    layers = 1 + max(k for k, _ in data)
    units = next(iter(data.values())).shape[1]
    rng = np.random.default_rng(123)
    values = {(k, s): data[(k, s)] if (k, s) in data else rng.random((len(text), units))
              for k in range(layers) for s in streams}
    return h5format.write(path, text, values, documents=documents, streams=streams, dtype=dtype)


@pytest.fixture
def synthetic(tmp_path):
    """A 2-layer, 5-unit recording over ~3000 characters of code with known activations."""
    text = CODE * 25
    T = len(text)
    rng = np.random.default_rng(0)
    feats = features.compute(text)
    data = {}
    for k in range(2):
        for s in STREAMS:
            x = rng.normal(size=(T, 5))
            if s in "ifo":
                x = 1 / (1 + np.exp(-2 * x))
            elif s in "gh":
                x = np.tanh(x)
            else:
                x = 4 * x  # c: unbounded
            data[(k, s)] = x
    data[(1, "c")][:, 3] = feats["in_string"] + rng.normal(0, 0.3, T)        # planted, binary
    data[(1, "h")][:, 0] = -np.tanh(feats["in_comment"] + rng.normal(0, 0.3, T))  # planted, inverted
    data[(0, "h")][:, 2] = np.tanh(feats["column"] / 40 + rng.normal(0, 0.1, T))  # planted, continuous
    data[(0, "g")][:, 4] = 0.25                                                # constant unit
    return write_recording(tmp_path / "syn.h5", text, data), data, feats


def with_directions(src, recs, W=None, b=(0.0, 5.0)):
    """A copy of the recording ``src`` in the folder ``recs`` with a hand-made derived stream
    ``dir`` on layer 1: two units (alpha, beta), each a direction in 1:h (``W`` [8, 2])."""
    import shutil

    from probe import open_recording
    from probe.recording import derived
    dst = recs / src.name
    shutil.copy(src, dst)
    with open_recording(dst) as rec:
        stamp = {"path": str(rec.path), "length": len(rec), "created": rec.created}
        sha = rec.model_sha256
    if W is None:
        W = torch.from_numpy(np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)) * 10
    spec = {"format": derived.FORMAT, "version": derived.VERSION, "kind": "directions", "stream": "dir",
            "layer": 1, "inputs": [[1, "h"]], "unit_names": ["alpha", "beta"], "model_sha256": sha,
            "fitted_on": stamp, "mean": torch.zeros(8), "scale": torch.ones(8),
            "params": {"W": W, "b": torch.tensor(list(b)), "state_mean": torch.zeros(8)},
            "metrics": {}, "config": {}}
    with open_recording(dst) as rec:
        derived.encode(rec, derived.save(spec, recs.parent / f"{src.stem}-dirs.pt"))
    return dst


def console_steps(section: str) -> list[tuple[str, list[str]]]:
    """The first ```console block of a page's section: [(command after "$ ", the lines shown under it)]."""
    block = section.split("```console", 1)[1].split("```", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for line in block.strip().splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def check_attribution(model, ids, cell: tuple[int, str, int], steps: int = 4, top: int = 3) -> None:
    """A circuit node's weight is d cell / d node × node: checked for the ``top`` strongest
    nodes by nudging the node in the recurrence (±1e-3) and reading the cell at the last id."""
    import pytest

    from probe.causal import circuit
    from probe.lm import recurrence
    at = len(ids) - 1
    _, nodes = circuit.attribution(model, ids, cell, steps=steps)
    for n in sorted(nodes, key=lambda n: -abs(n["weight"]))[:top]:
        point, t_node = (n["layer"], n["stream"]), at - n["steps_back"]
        seen = {}

        def run(eps):
            def nudge(k, s, t, v):
                if t == t_node:
                    seen["node"] = float(v[0, n["unit"]])
                    v = v.clone()
                    v[:, n["unit"]] += eps
                    return v

            def read(k, s, t, v):
                if t == at:
                    seen["cell"] = float(v[0, cell[2]])
            recurrence.run(model, ids, [(point, nudge), ((cell[0], cell[1]), read)], head=False)
            return seen["cell"]
        grad = (run(1e-3) - run(-1e-3)) / 2e-3
        assert n["weight"] == pytest.approx(grad * seen["node"], rel=1e-2, abs=1e-5), n


# ---- word-level: positions are tokens (issue 28) ------------------------------------------

PROSE = '''The cat sat on the mat, and the dog ran to the door.
  Indented words stay where they were; "quoted words" and (bracketed ones) too.
# a comment line with the cat in it
The dog sat on the mat and the cat ran.
'''


@pytest.fixture
def word_model():
    """A tiny 2-layer word-level LSTM: whitespace words, <eos> at each line end, <unk>."""
    from probe.text import tokens
    torch.manual_seed(0)
    model = CharRNN(tokens.word_vocab([PROSE], 24), layers=2, units=8, embedding=4, tokens="words")
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(3)
    return model.eval()


@pytest.fixture
def word_model_path(word_model, tmp_path):
    path = tmp_path / "words.pt"
    save_checkpoint(path, word_model, {"kind": "text", "fingerprint": corpus.fingerprint(PROSE)})
    return path


@pytest.fixture
def word_recording_path(word_model_path, tmp_path):
    """A float32 recording of the word model over two documents (a .txt and a .py)."""
    from probe.lm.model import load_model
    from probe.recording.record import record
    out = tmp_path / "words.h5"
    docs = [("a.txt", PROSE), ("b.py", CODE + PROSE.replace("cat", "bird"))]
    record(load_model(word_model_path), docs, out, dtype="float32", progress=False)
    return out
