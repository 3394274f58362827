"""``probe import``: bring your own recurrent language model. Runs the user's factory (their
code, as ``bokeh serve`` runs an app), adapts the module it returns (``probe.adapt``: parts
found by type, parity proven), and writes a probe checkpoint, which is data."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import torch

from probe.cli.common import command
from probe.errors import ProbeError
from probe.files import check_target
from probe.lm.adapt import adapt
from probe.lm.model import save_checkpoint
from probe.text import tokens as toks


def add_parser(sub) -> None:
    p = command(sub, "import", "bring your own PyTorch recurrent language model: adapt it, prove it "
                "computes the same, write a probe checkpoint", run, [
                    "probe import mymodel.py:build --out runs/mine.pt",
                    "probe import mymodel.py:build --weights trained.pt --vocab vocab.json --out runs/mine.pt",
                    "probe import mymodel.py:build --forward mymodel.py:scores --out runs/mine.pt",
                    ("probe import word_lm.py:build --weights w.pt --vocab idx2word.txt --tokens words "
                     "--out runs/words.pt")],
                note="FILE.py is run, exactly as bokeh serve runs an app: import only code you trust. "
                     "The checkpoint it writes is data (loadable with weights_only=True).")
    p.add_argument("factory", metavar="FILE.py:FACTORY",
                   help="a Python file and a function in it returning your module, or (module, vocab)")
    p.add_argument("--out", required=True, help="the probe checkpoint to write")
    p.add_argument("--weights", metavar="W.pt", help="a state_dict to load into the module "
                   "(read with weights_only=True)")
    p.add_argument("--vocab", metavar="V", help="the tokens in index order: a JSON list (e.g. "
                   "list(string.printable)), a JSON object {token: id}, or any other file one token per line "
                   "(a word LM Dictionary's idx2word); needed unless FACTORY returns (module, vocab)")
    p.add_argument("--tokens", choices=TOKENS, default="chars", help="what a position is: chars (default: "
                   "one character each), words (split on whitespace, <eos> at each line end, the PyTorch "
                   "word LM's way; needs <unk> and <eos>), vocab (the longest vocabulary token; needs <unk>). "
                   "The checkpoint keeps it: every command reads text this way")
    p.add_argument("--forward", metavar="FILE.py:FN", help="FN(module, ids [B, T]) returns your model's "
                   "scores [B, T, V] its own way; parity is proven against it (default: the parts in order)")
    p.add_argument("--embed", metavar="NAME", help="the input embedding's module name, if several")
    p.add_argument("--rnn", metavar="NAME[,NAME...]", help="the recurrent modules' names, bottom to top, "
                   "if the types leave them open")
    p.add_argument("--head", metavar="NAME", help="the output layer's module name, if several map onto the "
                   "vocabulary")
    p.add_argument("--force", action="store_true", help="replace an existing --out")


TOKENS = toks.KINDS  # chars, words, vocab


def read_vocab(path: str) -> list[str]:
    """The tokens in index order from a ``--vocab`` file: ``*.json`` a list (index = id) or an
    object {token: id} with ids 0..V-1 each once; any other file one token per line, its
    line ending dropped (no other stripping: a subword may start with a space). One line,
    naming the file, for anything else."""
    p = Path(path)
    if not p.is_file():
        raise ProbeError(f"{p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ProbeError(f"{p}: not UTF-8 text (byte {e.start})") from None
    if p.suffix.lower() != ".json":
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the file's last line end
        if lines and all(t.endswith("\r") for t in lines):
            lines = [t[:-1] for t in lines]  # CRLF
        empty = next((i for i, t in enumerate(lines) if not t), None)
        if empty is not None or not lines:
            raise ProbeError(f"{p}: line {(empty or 0) + 1} is empty: a vocabulary file holds one token per line, "
                             "line N the token of id N-1")
        where: dict[str, int] = {}
        for i, t in enumerate(lines):
            if t in where:
                raise ProbeError(f"{p}: lines {where[t] + 1} and {i + 1} both hold {t!r}: each token once")
            where[t] = i
        return lines
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProbeError(f"{p}: not JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(items, dict):
        return by_id(p, items)
    if not isinstance(items, list):
        raise ProbeError(f"{p}: a vocabulary is a JSON list of tokens in index order or an object {{token: id}}, "
                         f"not a {type(items).__name__}")
    odd = next((t for t in items if not isinstance(t, str)), None)
    if odd is not None:
        raise ProbeError(f"{p}: the tokens are strings; got {odd!r}")
    return items


def by_id(p: Path, items: dict) -> list[str]:
    """An object {token: id} as the tokens in id order; its ids must be 0..V-1, each once."""
    owner: dict[int, str] = {}
    for t, i in items.items():
        if not isinstance(i, int) or isinstance(i, bool):
            raise ProbeError(f"{p}: {t!r} has id {i!r}; ids are whole numbers 0..{len(items) - 1}")
        if i in owner:
            raise ProbeError(f"{p}: {owner[i]!r} and {t!r} both have id {i}: each id once")
        owner[i] = t
    gap = next((i for i in range(len(items)) if i not in owner), None)
    if gap is not None:
        raise ProbeError(f"{p}: no token has id {gap} (ids run to {max(owner)}): ids are 0..{len(items) - 1}, "
                         "each once")
    return [owner[i] for i in range(len(items))]


def function_of(spec: str, flag: str):
    """The function named by FILE.py:NAME, the file run as a script with its folder on the
    path (its own imports work); every failure is one line naming the file."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ProbeError(f"{flag} {spec!r}: write FILE.py:FUNCTION")
    file = Path(path)
    if not file.is_file():
        raise ProbeError(f"{file}: no such file")
    sys.path.insert(0, str(file.resolve().parent))
    try:
        ns = runpy.run_path(str(file), run_name="probe_import")
    except SyntaxError as e:
        raise ProbeError(f"{file}: not valid Python (line {e.lineno}: {e.msg})") from None
    except ImportError as e:
        raise ProbeError(f"{file}: its imports failed: {e}") from None
    except Exception as e:  # the user's module-level code: its failure is theirs, said in one line
        raise ProbeError(f"{file}: running it raised {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(str(file.resolve().parent))
    fn = ns.get(name)
    if not callable(fn):
        raise ProbeError(f"{file}: has no function {name}")
    return fn, file


def built(spec: str) -> tuple[torch.nn.Module, list | None, Path]:
    """(module, vocab or None, file) from the user's factory."""
    factory, file = function_of(spec, "probe import")
    name = spec.rpartition(":")[2]
    try:
        got = factory()
    except Exception as e:
        raise ProbeError(f"{file}: {name}() raised {type(e).__name__}: {e}") from None
    vocab = None
    if isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], torch.nn.Module):
        got, vocab = got
    if not isinstance(got, torch.nn.Module):
        raise ProbeError(f"{file}: {name}() returned a {type(got).__name__}; it must return an nn.Module "
                         "or (module, vocab)")
    return got, vocab, file


def load_weights(module: torch.nn.Module, path: str) -> None:
    """A state_dict file into the module (data only), or one line saying what does not fit."""
    p = Path(path)
    if not p.is_file():
        raise ProbeError(f"{p}: no such file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file it cannot read
        raise ProbeError(f"{p}: not a readable state_dict ({type(e).__name__}: {str(e).splitlines()[0][:100]})") \
            from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ProbeError(f"{p}: holds a {type(state).__name__}, not a state_dict")
    mine = module.state_dict()
    missing = [k for k in mine if k not in state]
    extra = [k for k in state if k not in mine]
    wrong = [k for k in mine if k in state and tuple(state[k].shape) != tuple(mine[k].shape)]
    if missing or extra or wrong:
        more = lambda names: f" (and {len(names) - 1} more)" if len(names) > 1 else ""  # noqa: E731
        what = (f"has {wrong[0]} of shape {tuple(state[wrong[0]].shape)}; the module's is "
                f"{tuple(mine[wrong[0]].shape)}" if wrong else f"lacks {missing[0]}{more(missing)}" if missing
                else f"has {extra[0]}{more(extra)}, which the module does not")
        raise ProbeError(f"{p}: does not fit the factory's module: it {what}")
    module.load_state_dict(state)


def run(a) -> int:
    out = check_target(a.out, a.force)
    torch.set_num_threads(1)  # small steps of the user's forward: more threads only wait on a busy machine
    module, vocab, file = built(a.factory)
    if a.weights:
        load_weights(module, a.weights)
    if a.vocab:
        vocab = read_vocab(a.vocab)
    if vocab is None:
        raise ProbeError(f"{file}: the factory returned no vocabulary: give --vocab V.json (a JSON list of the "
                         "tokens in index order)")
    forward = None
    if a.forward:
        fn, _ = function_of(a.forward, "--forward")
        forward = lambda ids: fn(module, ids)  # noqa: E731 (the user's scores, their own way)
    source = {"factory": a.factory, "weights": a.weights, "vocab": a.vocab, "tokens": a.tokens, "forward": a.forward,
              "device": str(next((p.device for p in module.parameters()), "cpu"))}
    model = adapt(module, vocab, forward=forward, embed=a.embed,
                  rnn=a.rnn.split(",") if a.rnn else None, head=a.head, source=source, tokens=a.tokens)
    save_checkpoint(out, model, metrics={"parity": model.config["parity"]})
    p = model.config["parity"]
    shape = ", ".join(f"{s['units']}" + (f"→{s['proj']}" if s["proj"] else "") + (f" x{s['layers']}" if
                      s["layers"] > 1 else "") for s in model.config["stack"])
    print(f"wrote {out}: {model.cell} layers {shape}, {len(model.vocab)} tokens"
          f"{'' if a.tokens == 'chars' else f' ({a.tokens})'}, "
          f"{'embedding ' + str(model.config['embedding']) if model.config['embedding'] else 'one-hot input'}"
          f"{', tied head' if model.config['tied'] else ''}")
    print(f"parity against {'your forward' if p['reference'] == 'forward' else 'the parts in order'}: "
          f"max |log p difference| {p['max_abs_diff']:.2g} (tolerance {p['tolerance']:g} + "
          f"{p['relative']:g} x |log p|) on "
          + " and ".join(p["checked"]))
    return 0

