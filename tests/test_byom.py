"""docs/byom.md is a promise: each worked example's console block runs as written, in order,
in a fresh folder holding only the example files, and prints what the page shows; the
Python example runs; the error lines the page quotes are what probe says.

The blocks' commands run as subprocesses with only ``--steps`` (training) and ``--limit``
(recording) appended to make them short (argparse takes the last value); the import's
first line (the shape) must be the page's, word for word, and its parity line the page's
kind, within the tolerance. ``bokeh serve`` runs once, after the three blocks, over the
folder they recorded into, and serves each picture's URL.
"""
from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import socket
import string
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import console_steps

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "byom.md").read_text()
EXAMPLES = ("char_lstm", "two_widths", "onehot_rnn")
SHORTER = {"python": ["--steps", "20"], "record": ["--limit", "5000"]}
PARITY = re.compile(r"parity against (your forward|the parts in order): max \|log p difference\| (\S+) "
                    r"\(tolerance 1e-05 \+ 1e-06 x \|log p\|\) on random ids and a text")


def blocks() -> dict[str, list[tuple[str, list[str]]]]:
    """For each worked example (by its file's name): [(command, the lines shown under it)]."""
    worked = DOC.split("## Three worked examples", 1)[1].split("\n## ", 1)[0]
    out = {}
    for section in worked.split("\n### ")[1:]:
        steps = console_steps(section)
        name = Path(shlex.split(steps[0][0])[1]).stem  # $ python examples/byom/NAME.py ...
        out[name] = steps
    return out


def widths_shown(line: str) -> list[int]:
    """Each layer's units from an import's first line: "layers 128 x2" or "layers 192, 64"."""
    shape = re.search(r"layers (.*?), \d+ tokens", line).group(1)
    return [int(w) for part in shape.split(", ") for w in
            ([part.split(" x")[0]] * int(part.split(" x")[1]) if " x" in part else [part])]


def pictures() -> list[tuple[str, dict]]:
    """(image path, the URL query under it) for every picture of the page."""
    found = re.findall(r"!\[[^\]]*\]\((img/byom-[\w-]+\.png)\)\n\n\*.*?`/cells\?([^`]+)`\*", DOC, re.DOTALL)
    return [(img, dict(kv.split("=", 1) for kv in query.split("&"))) for img, query in found]


def named(doc, name: str):
    """The Bokeh model of that name in a session's document."""
    return doc.select_one({"name": name})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_is_whole_and_linked():
    """Three blocks in the order train, import, record, analyze, serve; a picture each on a
    cell the model has; the example files exist; the README links the page."""
    got = blocks()
    assert list(got) == list(EXAMPLES)
    for name, steps in got.items():
        words = [shlex.split(command)[:2] for command, _ in steps]
        assert words == [["python", f"examples/byom/{name}.py"], ["probe", "import"], ["probe", "record"],
                         ["probe", "analyze"], ["bokeh", "serve"]], name
        assert (ROOT / "examples" / "byom" / f"{name}.py").is_file()
        assert len(steps[1][1]) == 2 and PARITY.fullmatch(steps[1][1][1]), steps[1][1]
        assert f"--out recordings/byom/{name}.h5" in steps[2][0] and f"recordings/byom/{name}.h5" in steps[3][0]
    shown = {name: widths_shown(steps[1][1][0]) for name, steps in got.items()}
    assert shown == {"char_lstm": [128, 128], "two_widths": [192, 64], "onehot_rnn": [128, 128]}
    pics = pictures()
    assert [Path(img).stem for img, _ in pics] == [f"byom-{n}" for n in EXAMPLES]
    for img, query in pics:
        png = ROOT / "docs" / img
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000, img
        name = query["recording"].removesuffix(".h5")
        assert 0 <= int(query["unit"]) < shown[name][int(query["layer"])], (img, query)
    assert "[docs/byom.md](docs/byom.md)" in (ROOT / "README.md").read_text()


def run_block(name: str, steps, cwd: Path, env: dict) -> None:
    """One example's block, up to its ``bokeh serve``, with what each step wrote checked."""
    from probe.recording.reader import open_recording
    checkpoint = cwd / "runs" / f"{name}.pt"
    for command, shown in steps[:-1]:
        argv = shlex.split(command)
        argv += SHORTER.get(argv[0], SHORTER["record"] if argv[1] == "record" else [])
        exe = sys.executable if argv[0] == "python" else shutil.which("probe")
        assert exe, "the probe command is not installed (pip install -e .)"
        done = subprocess.run([exe, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"$ {' '.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr, done.stderr
        said = done.stdout.splitlines()
        if argv[1] == "import":
            assert said[0] == shown[0], f"the page shows {shown[0]!r}; probe import printed {said[0]!r}"
            mine, theirs = PARITY.fullmatch(said[1]), PARITY.fullmatch(shown[1])
            assert mine, said
            assert mine.group(1) == theirs.group(1) and float(mine.group(2)) <= 1e-5
            ck = torch.load(checkpoint, weights_only=True)  # data: no code of the example in it
            assert ck["config"]["kind"] == "imported" and ck["config"]["vocab"] == string.printable
            parity = ck["config"]["parity"]
            assert parity["reference"] == ("forward" if "--forward" in argv else "parts")
            assert f"{parity['max_abs_diff']:.2g}" == mine.group(2)
        elif argv[1] == "record":
            with open_recording(cwd / argv[argv.index("--out") + 1]) as rec:
                assert len(rec.text) == 5000
                widths = [rec.stream(layer, "h").shape[1] for layer in range(rec.layers)]
            assert widths == widths_shown(steps[1][1][0]), name
        elif argv[1] == "analyze":
            assert "top 5 cells per feature" in said[0] and "in_comment" in done.stdout
    assert checkpoint.is_file() and (cwd / "runs" / f"{name}.weights.pt").is_file()


def test_the_worked_examples_run_as_written(tmp_path):
    """Each block in a folder holding only examples/byom/*.py: the training writes the
    weights the import reads, the import prints the page's shape and a parity line of the
    page's kind, the recording has each layer at the page's width, the dashboard serves
    every picture's URL on its recording and cell."""
    (tmp_path / "examples").mkdir()
    shutil.copytree(ROOT / "examples" / "byom", tmp_path / "examples" / "byom",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # one torch thread, as the other tests (conftest): on a shared 2-core machine probe import's
    # parity check through char_lstm's step loop takes ~2 s with it, ~27 s with two busy cores
    env = {**os.environ, "PROBE_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    got = blocks()
    for name, steps in got.items():
        run_block(name, steps, tmp_path, env)
    assert (tmp_path / "runs" / "onehot_rnn.vocab.json").is_file()  # --vocab reads what training wrote

    serves = {steps[-1][0] for steps in got.values()}
    assert serves == {"bokeh serve apps/cells --args --recordings recordings/byom/"}
    serve = shlex.split(serves.pop())
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "bokeh", "serve", str(ROOT / serve[2]), "--port", str(port),
                                   *serve[3:]], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/cells"
    try:
        deadline, page = time.time() + 120, ""
        while not page:
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    page = r.read().decode()
            except OSError:
                assert server.poll() is None and time.time() < deadline, \
                    f"the dashboard did not answer\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
        from bokeh.client import pull_session
        for img, query in pictures():  # each picture's URL opens on its recording and cell
            with pull_session(url=url, arguments=query) as session:
                model = functools.partial(named, session.document)
                assert not model("notice").visible, (img, model("notice").text)
                for name in ("recording", "layer", "stream", "unit", "feature"):
                    assert str(model(name).value) == query[name], (img, name, model(name).value)
                assert len(model("text").text) > 1000 and query["recording"] in model("status").text, img
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_the_python_example_runs(tmp_path, monkeypatch):
    """The page's ``probe.adapt`` block: parity within 1e-5, the hook read layer 1's c at
    every character, and the checkpoint it saves is data that loads as the same model."""
    monkeypatch.chdir(tmp_path)
    code = DOC.split("```python", 1)[1].split("```", 1)[0]
    ns: dict = {}
    exec(compile(code, "docs/byom.md", "exec"), ns)
    model, seen, logits = ns["model"], ns["seen"], ns["logits"]
    assert model.config["parity"]["max_abs_diff"] <= 1e-5
    assert len(seen) == len("def f(x):\n    return x\n") and seen[0].shape == (1, 64)
    import probe
    ck = torch.load(tmp_path / "runs" / "net.pt", weights_only=True)
    assert ck["config"]["kind"] == "imported"
    again, _ = probe.run(probe.load_model(tmp_path / "runs" / "net.pt"), "def f(x):\n    return x\n")
    torch.testing.assert_close(again, logits)
    with torch.no_grad():  # and it is the user's net: its own logits
        ids = torch.tensor([[string.printable.index(ch) for ch in "def f(x):\n    return x\n"]])
        torch.testing.assert_close(ns["net"](ids), logits, atol=1e-5, rtol=0)


def quoted(title: str) -> dict[str, str]:
    """The page's table under ``title``: {first cell: the quoted error}."""
    after = DOC.split(title, 1)[1]
    table = after[after.index("| your model |"):].split("\n\n", 1)[0]
    rows = [r.split(" | ") for r in table.splitlines()[2:]]
    return {r[0].strip("| "): r[1].strip("|` ") for r in rows}


class Base(nn.Module):
    """Named as on the page: e, rnn, out."""

    def __init__(self, vocab: int = 100, rnn: nn.Module | None = None, width: int = 32):
        super().__init__()
        self.e = nn.Embedding(vocab, 16)
        self.rnn = rnn if rnn is not None else nn.LSTM(16, width, batch_first=True)
        self.out = nn.Linear(width, vocab)

    def forward(self, ids):
        return self.out(self.rnn(self.e(ids))[0])


def test_the_errors_the_page_quotes_are_what_probe_says():
    """Each quoted line, numbers aside, from probe.adapt on a model of that kind."""
    import probe
    from probe.errors import ProbeError
    torch.manual_seed(0)

    def said(module, vocab=string.printable, forward=None) -> str:
        with pytest.raises(ProbeError) as e:
            probe.adapt(module, vocab, forward=forward)
        return str(e.value)

    cells = Base()
    del cells.rnn
    cells.cell = nn.LSTMCell(16, 32)
    plain = nn.Module()
    plain.e, plain.out = nn.Embedding(100, 16), nn.Linear(16, 100)
    refused = quoted("Refused before any parity check")
    assert said(Base(rnn=nn.LSTM(16, 16, bidirectional=True, batch_first=True))) == \
        refused["a bidirectional `nn.LSTM`"]
    assert said(cells) == refused["an `nn.LSTMCell` stepped by its own loop"]
    assert said(plain) == refused["no recurrent module"]
    assert said(Base(vocab=96)) == refused["a vocabulary of the wrong size"]
    assert said(Base(), ["ab"] * 100).startswith(refused["tokens that are not single characters"].rstrip(" …"))

    norm = Base()
    norm.norm = nn.LayerNorm(32)
    hot, h0 = Base(), nn.Parameter(torch.randn(1, 1, 32))

    def with_h0(ids):
        h = h0.expand(1, ids.shape[0], 32).contiguous()
        return hot.out(hot.rnn(hot.e(ids), (h, torch.zeros_like(h)))[0])

    differs = quoted("where the two part ways")
    cases = {"a layer norm between the LSTM and the head": (norm, lambda ids: norm.out(norm.norm(
                 norm.rnn(norm.e(ids))[0]))),
             "logits divided by a temperature": (hot, lambda ids: hot(ids) / 0.7),
             "a learned initial state": (hot, with_h0)}
    assert set(cases) == set(differs)
    number = r"[0-9.e+-]+"
    for kind, (module, forward) in cases.items():
        quote = differs[kind]
        tail = quote.split("… ", 1)[-1]  # the page shortens the start after the first row
        pattern = re.escape(tail)
        for n in re.findall(r"\d+\.\d+(?:e-\d+)?", tail):
            pattern = pattern.replace(re.escape(n), number, 1)
        assert re.search(pattern + "$", said(module, forward=forward)), kind
