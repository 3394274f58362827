"""The README is a promise: its pipeline runs as written, in order, on a fresh clone; the
Python API page runs; generated files are never tracked.

The pipeline test runs every ``$ probe …`` line of the README's console block in a fresh
temporary folder, in order, as a subprocess. It only appends the command's own ``--limit``
or ``--steps`` to make long runs short (argparse takes the last value), and changes
nothing else: every output folder must be created by the command, and every path a
command reads must be one an earlier command wrote.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# what each long command gets appended, by its leading words (only --limit and --steps)
SHORTER = {
    ("record", "--split test"): ["--limit", "15000"],   # the match example's span lies at 12,535
    ("record", "--split train"): ["--limit", "12000"],  # five documents: enough for two shards
    ("ablate",): ["--limit", "2000"],
    ("gradients",): ["--limit", "3000"],
    ("dictionary",): ["--steps", "20"],
    ("ngram",): ["--limit", "50000"],
    ("train", "--tokens words"): ["--steps", "2", "--limit", "80000"],  # a batch of 64 x 128 words
    ("train",): ["--steps", "2", "--limit", "20000"],
}


def pipeline() -> list[str]:
    """The ``$ …`` lines of the console block under "## The pipeline"."""
    block = README.split("## The pipeline", 1)[1].split("```console", 1)[1].split("```", 1)[0]
    return [line[2:] for line in block.splitlines() if line.startswith("$ ")]


def argv_of(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    extra = next((v for k, v in SHORTER.items()
                  if words[1] == k[0] and all(part in line for part in k[1:])), [])
    return words + extra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_pipeline_runs_in_order_on_a_fresh_folder(tmp_path):
    lines = pipeline()
    assert lines[-1].startswith("bokeh serve apps/cells"), "the block ends by serving the dashboard"
    assert len(lines) >= 15
    env = {**os.environ, "PROBE_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore"}
    probe = shutil.which("probe")
    assert probe, "the probe command is not installed (pip install -e .)"
    for line in lines[:-1]:
        argv = argv_of(line)
        assert argv[0] == "probe", line
        done = subprocess.run([probe, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"$ {' '.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr, done.stderr
    made = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    for path in ("recordings/stdlib-test.h5", "runs/quote-cell.html", "runs/dirs.pt", "runs/dict.pt",
                 "runs/stdlib-10.ngram.npz", "lstmvis/stdlib-test", "runs/stdlib.pt", "runs/gru.pt",
                 "recordings/train", "recordings/from-lstmvis.h5", "runs/words.pt", "recordings/words-test.h5"):
        assert path in made, f"{path} was not written"

    # the last line serves the dashboard on what the block recorded (here on a free port)
    serve = shlex.split(lines[-1])
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bokeh", *serve[1:2], str(ROOT / serve[2]),
                               "--port", str(port), *serve[3:]], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, page = time.time() + 120, ""
        while time.time() < deadline and not page:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/cells", timeout=30) as r:
                    page = r.read().decode()
            except OSError:
                time.sleep(0.5)
        assert "bokeh" in page.lower(), "the dashboard did not answer"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_readme_command_is_a_real_command_with_flags_it_knows():
    """Cheap and fast: each pipeline line parses with probe's own parser (no run)."""
    from probe.cli import parser
    p = parser()
    for line in pipeline()[:-1]:
        words = shlex.split(line, comments=True)[1:]
        try:
            p.parse_args(words)
        except SystemExit as e:  # argparse exits on an unknown flag
            pytest.fail(f"$ {line}: argparse exit {e.code}")


def test_the_api_page_example_runs(recording_path, tmp_path, monkeypatch):
    """docs/api.md's block on a small recording: the path and the example's numbers (unit 89,
    the span) are the only things replaced, to fit the tiny model."""
    monkeypatch.chdir(tmp_path)  # the example writes dirs.pt where it runs
    doc = (ROOT / "docs" / "api.md").read_text()
    code = doc.split("```python", 1)[1].split("```", 1)[0]
    from probe import open_recording
    with open_recording(recording_path) as rec:  # a span where some unit of layer 0 c turns on
        c = np.tanh(rec.stream(0, "c")[:])
        t = int(np.flatnonzero(((c[1:] >= 0.3) & (c[:-1] < 0.3)).any(axis=1))[0]) + 1
    replaced = code.replace("recordings/stdlib-test.h5", str(recording_path))
    replaced = re.sub(r"\b89\b", "3", replaced).replace("12535, 12538", f"{t}, {t + 1}")
    assert replaced.count(str(recording_path)) >= 5 and "3)" in replaced
    exec(compile(replaced, "docs/api.md", "exec"), {})


def test_the_api_pages_own_intervention_runs():
    """docs/api.md's sweep written as one hook: each row's cost is its own unit's flip."""
    doc = (ROOT / "docs" / "api.md").read_text()
    code = doc.split("## Your own intervention", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    ns: dict = {}
    exec(compile(code, "docs/api.md", "exec"), ns)
    model, text, cost = ns["model"], ns["text"], ns["cost"]
    assert ns["bits"].shape == (model.units + 1, len(text)) and np.isfinite(cost).all()
    from probe.lm.stepwise import stepwise
    u = int(np.argmax(np.abs(cost)))  # the unit that matters most: its row is the reference's
    _, want = stepwise(model, text, edit=lambda layer, stream, t, h: h * torch.where(
        torch.arange(model.units) == u, -1.0, 1.0) if (layer, stream) == (1, "h") else None)
    np.testing.assert_allclose(ns["bits"][1 + u], want, atol=1e-5, equal_nan=True)
    assert abs(cost[u]) > 1e-3


def test_the_api_pages_patching_example_runs():
    doc = (ROOT / "docs" / "api.md").read_text()
    code = doc.split("## Counterfactual patching and circuits", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    ns: dict = {}
    exec(compile(code, "docs/api.md", "exec"), ns)
    res, c = ns["res"], ns["c"]
    assert [r["unit"] for r in res["rows"]] == [89, 158] and res["pairs"] == 20
    assert len(res["heat"][0]["effects"]) == 6 and len(c["edges"]) == 8
    assert c["check"]["top_k_effect"] > c["check"]["random_effect"]  # the attribution's top nodes matter more


def test_the_readmes_hook_examples_run_and_do_what_they_say():
    """The README's three hooks on the shipped model: a read, a pin from position 100, a
    direction projected out."""
    code = README.split("## One forward pass with hook points", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    T = len(ns["text"])
    assert ns["c1"].shape == (T, 256) and ns["logits"].shape == (1, T, len(ns["model"].vocab))
    logits, pinned, removed = ns["logits"], ns["pinned"], ns["removed"]
    assert (pinned[0, :100] - logits[0, :100]).abs().max() < 1e-5  # before position 100: the same
    assert (pinned[0, 100:] - logits[0, 100:]).abs().max() > 1e-3   # from it: the pin acts
    assert (removed - logits).abs().max() > 1e-3


def test_generated_files_are_never_tracked():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    generated = [f for f in tracked if re.search(r"\.(h5|npy|npz|tmp)$|\.analysis\.|\.match-", f)]
    assert not generated, f"generated files are tracked: {generated}"
    for name in ("recordings/x.h5", "recordings/x.h5.match-0-c-0.3.npy", "recordings/x.h5.analysis.npz",
                 "runs/model.pt", "lstmvis/x/states.h5", "stdlib-10.ngram.npz"):
        ignored = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT).returncode == 0
        assert ignored, f"{name} would not be ignored by .gitignore"


def test_the_readme_is_short_and_links_every_docs_page():
    assert len(README.splitlines()) <= 250
    for page in ("findings", "models", "dashboard", "cli", "api", "benchmarks", "scale", "byom"):
        assert f"docs/{page}.md" in README, page
        assert (ROOT / "docs" / f"{page}.md").exists(), page


def test_the_words_table_is_what_the_cli_says():
    """The README's glossary and the CLI agree: every flag it writes is a visible flag of some
    command, a cell is written L:S:U in the CLI's own metavars, and the types are the words'."""
    import argparse

    from probe.cli import parser
    section = README.split("## Words", 1)[1].split("\n## ", 1)[0]
    rows = {r.split("|")[1].strip(" *"): r.split("|")[3] for r in section.splitlines() if r.startswith("| **")}
    assert {"layer", "stream", "unit", "position", "cell", "cell type", "feature", "edit"} <= set(rows)
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    visible = {}  # flag -> its actions over every command
    for p in sub.choices.values():
        for action in p._actions:
            if action.help != argparse.SUPPRESS:
                for flag in action.option_strings:
                    visible.setdefault(flag, []).append(action)
    for word, written in rows.items():
        for flag in re.findall(r"`(--[a-z-]+)", written):
            assert flag in visible, f"the README writes {flag} for {word!r}; no command has it"
    assert all("L:S:U" in (a.metavar or "") for a in visible["--cells"] + visible["--clamp"])
    assert all(a.choices == ["lstm", "gru", "rnn"] for a in visible["--cell-type"])
    assert "--cell" not in visible and "--on" not in visible  # the old words are hidden
    assert all(a.type is None for a in visible["--features"])  # a list of labels, never a width
    assert "`L:S:U`" in rows["cell"] and "`--cell-type gru`" in rows["cell type"]
