"""Bring your own model: find the parts of a PyTorch recurrent language model by their types,
copy them into a probe model, and prove it computes what the user's model computes.

    model = probe.adapt(module, list(string.printable), forward=lambda ids: my_scores(ids))

The parts, found by type (the names ``embed``, ``rnn``, ``head`` say which module when the
type leaves it open):

- the input map: an ``nn.Embedding``, or one-hot vectors when there is none and the first
  recurrent layer reads as many inputs as the vocabulary has tokens;
- the recurrent modules, bottom to top: ``nn.LSTM`` (``proj_size`` too), ``nn.GRU``, ``nn.RNN``
  (tanh or relu), stacked in one module or one module per layer of its own width,
  ``batch_first`` either way, with or without biases (dropout between them is off in eval);
- the head: the ``nn.Linear`` onto the vocabulary, possibly tied to the embedding.

Parity: the adapted model's log-probabilities must equal the user's within 1e-5 on random
ids and on a text of the vocabulary's own tokens. ``forward(ids [B, T]) → scores [B, T, V]``
runs the user's model their own way (logits or log-probabilities; compared after
log-softmax); without it, the found parts composed in order are the reference. A mismatch
is one line saying where the two part ways, read from hooks on the user's modules.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from probe.errors import ProbeError
from probe.lm import imported, recurrence
from probe.lm.parts import cell_of
from probe.text import tokens as toks

TOLERANCE = 1e-5  # |log p| difference allowed, float32 ...
RELATIVE = 1e-6   # ... plus this much of |log p|: float32 rounds log p ~ -20 to a few 1e-6 (a model's own
# one-step loop and its whole-sequence run already differ by that much on very unlikely tokens)
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)
CELLS = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)
SAMPLE = '''def fetch(url, retries=3):
    """Get a page; try again on errors."""
    for attempt in range(retries):  # count from 0
        try:
            return open(url).read()
        except OSError as e:
            print("retry", attempt, e)
    return None
'''


def vocabulary(vocab, kind: str = "chars") -> toks.Tokenizer:
    """The vocabulary as probe holds it, with its tokenizer (``probe.text.tokens``): for
    ``chars`` single characters in index order (a string or a list); for ``words`` and
    ``vocab`` a list of tokens in index order (or a PyTorch word-LM ``Dictionary``, read
    through its ``idx2word``), holding ``<unk>``, and ``<eos>`` for words (``Tokenizer``
    checks those, each token once, and single characters). One line if not."""
    if kind not in toks.KINDS:
        raise ProbeError(f"unknown tokens {kind!r}: choose {', '.join(toks.KINDS)}")
    vocab = getattr(vocab, "idx2word", vocab)  # word_language_model's Dictionary
    if isinstance(vocab, dict):
        raise ProbeError("give the vocabulary as its tokens in index order (a list), not a dict")
    items = list(vocab)
    odd = [t for t in items if not isinstance(t, str) or not t]
    if odd:
        raise ProbeError(f"a vocabulary's tokens are non-empty strings; got {odd[0]!r}")
    if kind == "words":
        spaced = next((t for t in items if re.search(r"\s", t)), None)
        if spaced is not None:
            raise ProbeError(f"the words vocabulary holds {spaced!r}, which has whitespace: words are split on "
                             "whitespace, so no text reads as it")
    return toks.Tokenizer(kind, tuple(items))


def sample_ids(tokenizer: toks.Tokenizer) -> list[int]:
    """The ids of the parity check's text: for characters the Python snippet ``SAMPLE``, its
    characters the vocabulary holds; otherwise the vocabulary's own tokens in index order
    (repeated to at least 64) joined the tokenizer's way (words with spaces, ``<eos>`` a line
    end) and read back by it, so the check runs on what the tokenizer makes of a text."""
    if tokenizer.kind == "chars":
        return [tokenizer.index[ch] for ch in SAMPLE if ch in tokenizer.index]
    V = len(tokenizer.vocab)
    text = tokenizer.join([i % V for i in range(max(64, min(V, 256)))])
    return tokenizer.encode(text)[0].tolist()


def _named(module: nn.Module, name: str, kinds: tuple, what: str) -> tuple[str, nn.Module]:
    found = dict(module.named_modules()).get(name)
    if found is None:
        raise ProbeError(f"{what}={name!r}: the model has no module of that name")
    if not isinstance(found, kinds):
        raise ProbeError(f"{what}={name!r} is a {type(found).__name__}, not {' or '.join(k.__name__ for k in kinds)}")
    return name, found


def find_parts(module: nn.Module, V: int, embed: str | None = None, rnn=None,
               head: str | None = None) -> tuple:
    """((name, nn.Embedding) or None, [(name, recurrent module)], (name, nn.Linear)), by type."""
    mods = [(n, m) for n, m in module.named_modules() if n]
    if rnn is not None:
        names = [rnn] if isinstance(rnn, str) else list(rnn)
        recurrent = [_named(module, n, RECURRENT, "rnn") for n in names]
    else:
        recurrent = [(n, m) for n, m in mods if isinstance(m, RECURRENT)]
        if isinstance(module, RECURRENT):
            recurrent = [("", module)]
    if not recurrent:
        cells = [n for n, m in mods if isinstance(m, CELLS)]
        if cells:
            raise ProbeError(f"{cells[0]} is an {type(dict(mods)[cells[0]]).__name__} stepped by the model's own "
                             "loop: probe reads whole nn.LSTM / nn.GRU / nn.RNN modules (an nn.LSTM of one "
                             "layer holds the same weights under weight_ih_l0, weight_hh_l0, …)")
        raise ProbeError("the model has no recurrent module (nn.LSTM, nn.GRU or nn.RNN)")
    for n, m in recurrent:
        if m.bidirectional:
            raise ProbeError(f"{n or 'the model'} is bidirectional: not a left-to-right language model")
    kinds = {cell_of(m) for _, m in recurrent}
    if len(kinds) > 1:
        raise ProbeError(f"the recurrent modules mix {' and '.join(sorted(kinds))} layers; probe runs one "
                         "cell type per model")
    if embed is not None:
        emb = _named(module, embed, (nn.Embedding,), "embed")
    else:
        embs = [(n, m) for n, m in mods if isinstance(m, nn.Embedding)]
        if len(embs) > 1:
            raise ProbeError(f"the model has {len(embs)} embeddings ({', '.join(n for n, _ in embs)}): "
                             "name the input's with embed=")
        emb = embs[0] if embs else None
    if emb is not None and emb[1].num_embeddings != V:
        raise ProbeError(f"the vocabulary has {V} tokens but the embedding {emb[0]} has {emb[1].num_embeddings} rows")
    if head is not None:
        out = _named(module, head, (nn.Linear,), "head")
    else:
        heads = [(n, m) for n, m in mods if isinstance(m, nn.Linear) and m.out_features == V]
        if not heads:
            raise ProbeError(f"the model has no nn.Linear onto the {V} tokens of the vocabulary (the head); "
                             "a vocabulary of the wrong size?")
        if len(heads) > 1:
            raise ProbeError(f"{', '.join(n for n, _ in heads)} all map onto {V} outputs: name the head with head=")
        out = heads[0]
    return emb, recurrent, out


def check_shapes(emb, recurrent, head, V: int) -> None:
    """One line for the first part that does not fit the next: the vocabulary, the widths."""
    first = recurrent[0][1]
    if emb is not None:
        n, e = emb
        if e.num_embeddings != V:
            raise ProbeError(f"the vocabulary has {V} tokens but the embedding {n} has {e.num_embeddings} rows")
        if e.embedding_dim != first.input_size:
            raise ProbeError(f"the embedding {n} gives {e.embedding_dim} values; {recurrent[0][0]} reads "
                             f"{first.input_size}")
    elif first.input_size != V:
        raise ProbeError(f"no nn.Embedding, and {recurrent[0][0]} reads {first.input_size} inputs, not one per "
                         f"token ({V}): probe cannot tell how the model reads a token")
    for (n0, a), (n1, b) in zip(recurrent, recurrent[1:]):
        width = a.proj_size if getattr(a, "proj_size", 0) else a.hidden_size
        if b.input_size != width:
            raise ProbeError(f"{n0} gives {width} values; {n1} reads {b.input_size}: not stacked as found")
    top_n, top = recurrent[-1]
    width = top.proj_size if getattr(top, "proj_size", 0) else top.hidden_size
    if head[1].in_features != width:
        raise ProbeError(f"{top_n} gives {width} values; the head {head[0]} reads {head[1].in_features}: the "
                         "model's forward does something between them that probe does not see")


def config_of(tokenizer: toks.Tokenizer, emb, recurrent, head, source: dict) -> dict:
    """The imported model's config (``probe.lm.imported``) for the found parts; the
    vocabulary a string for characters (as before), else a list, with its tokenizer's kind."""
    stack = [{"inputs": m.input_size, "units": m.hidden_size, "proj": int(getattr(m, "proj_size", 0) or 0),
              "bias": bool(m.bias), "nonlinearity": getattr(m, "nonlinearity", "tanh"), "layers": m.num_layers,
              "name": n} for n, m in recurrent]
    tied = emb is not None and head[1].weight is emb[1].weight
    vocab = "".join(tokenizer.vocab) if tokenizer.kind == "chars" else list(tokenizer.vocab)
    kind = {} if tokenizer.kind == "chars" else {"tokens": tokenizer.kind}
    return {"kind": imported.KIND, "vocab": vocab, **kind, "cell": cell_of(recurrent[0][1]),
            "layers": sum(m.num_layers for _, m in recurrent), "units": max(m.hidden_size for _, m in recurrent),
            "embedding": emb[1].embedding_dim if emb is not None else 0, "dropout": 0.0, "tied": tied,
            "head_bias": head[1].bias is not None, "stack": stack,
            "parts": {"embed": emb[0] if emb else None, "rnn": [n for n, _ in recurrent], "head": head[0]},
            "source": source}


@torch.no_grad()
def copy_weights(model: imported.RecurrentLM, emb, recurrent, head) -> None:
    """The user's weights into the probe model, on the CPU, float32."""
    if emb is not None:
        model.embed.weight.copy_(emb[1].weight.detach().float().cpu())
    for mine, (_, theirs) in zip(model.stack, recurrent):
        for name, p in mine.named_parameters():
            p.copy_(getattr(theirs, name).detach().float().cpu())
    if not model.config.get("tied"):
        model.head.weight.copy_(head[1].weight.detach().float().cpu())
    if head[1].bias is not None:
        model.head.bias.copy_(head[1].bias.detach().float().cpu())


def device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def composed(emb, recurrent, head, V: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The found parts run in order, each as the user's own module: the reference when the
    user gives no ``forward``."""
    def run(ids: torch.Tensor) -> torch.Tensor:
        x = emb[1](ids) if emb is not None else nn.functional.one_hot(ids, V).float()
        for _, m in recurrent:
            x = m(x if m.batch_first else x.transpose(0, 1))[0]
            x = x if m.batch_first else x.transpose(0, 1)
        return head[1](x)
    return run


def _scores(forward, ids: torch.Tensor, device, V: int) -> torch.Tensor:
    """log-probabilities [B, T, V] of the user's forward on ids, on the CPU."""
    try:
        with warnings.catch_warnings():  # PyTorch's note that oneDNN lacks projections: not the user's concern
            warnings.filterwarnings("ignore", message="LSTM with projections")
            out = forward(ids.to(device))
    except ProbeError:
        raise
    except Exception as e:  # the user's code: any failure is theirs to read, in one line
        raise ProbeError(f"the model's forward failed on ids {tuple(ids.shape)}: {type(e).__name__}: {e}") from None
    if isinstance(out, tuple):
        out = out[0]
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (*ids.shape, V):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ProbeError(f"forward must return scores [batch, positions, vocabulary] = {(*ids.shape, V)}; got "
                         f"{shape} (reshape a flattened [T·B, V], transpose a seq-first [T, B, V])")
    return torch.log_softmax(out.detach().float().cpu(), -1)


def _watch(module: nn.Module, names: Sequence[str]) -> tuple[dict, list]:
    """Forward hooks keeping every call's (input, output) of each named module: a model that
    steps its recurrent module one position at a time calls it once per position."""
    seen: dict = {}
    handles = []
    mods = dict(module.named_modules())
    for n in names:
        def keep(m, inp, out, n=n):
            seen.setdefault(n, []).append((inp[0].detach() if inp else None,
                                           (out[0] if isinstance(out, tuple) else out).detach()))
        handles.append(mods[n].register_forward_hook(keep))
    return seen, handles


def where_it_differs(module, emb, recurrent, head, model, forward, ids, V) -> str:
    """Where the user's forward and probe's part ways, from hooks on the user's modules."""
    seen, handles = _watch(module, [n for n, _ in recurrent[-1:]] + [head[0]])
    try:
        _scores(forward, ids, device_of(module), V)  # run for what the hooks keep
    finally:
        for h in handles:
            h.remove()
    top, _ = recurrence.run(model, ids, head=False)  # [B, T, out]
    rnn_name, rnn_mod = recurrent[-1]
    if rnn_name not in seen:
        return (f"the model's forward never calls {rnn_name}: it computes its scores another way "
                "(an nn.LSTMCell loop? give rnn= the module it uses)")
    # one call per position (a step-by-step model) or one for the whole text: joined along time
    got = torch.cat([o.float().cpu() for _, o in seen[rnn_name]], dim=1 if rnn_mod.batch_first else 0)
    got = got if rnn_mod.batch_first else got.transpose(0, 1)
    if got.shape != top.shape:
        return (f"{rnn_name} returned {tuple(got.shape)} for ids {tuple(ids.shape)}; probe expected "
                f"{tuple(top.shape)}: the forward feeds it something else (another layout, or only part of the text)")
    d = float((got - top).abs().max())
    if d > TOLERANCE:
        return (f"the recurrent layers' output differs by {d:.3g}: the model's forward feeds {rnn_name} something "
                "other than the input map of the ids from a zero state (a learned initial state? another input?)")
    if head[0] not in seen:
        return f"the model's forward never calls the head {head[0]}"
    calls = [i for i, _ in seen[head[0]] if i is not None]
    hin = torch.cat([i.float().cpu().reshape(-1, i.shape[-1]) for i in calls]) if calls else None
    if hin is not None and hin.shape == (top.shape[0] * top.shape[1], top.shape[2]):
        flat = [top.reshape(-1, top.shape[2]), top.transpose(0, 1).reshape(-1, top.shape[2])]
        d = min(float((hin - f).abs().max()) for f in flat)
        if d > TOLERANCE:
            return (f"logits differ after the recurrent layers: what {head[0]} reads differs from {rnn_name}'s "
                    f"output by {d:.3g}: the model's forward does something between {rnn_name} and {head[0]} "
                    "that probe does not see")
    return (f"the logits differ after the head {head[0]}: the model's forward changes its output "
            "(a temperature, a mask, another bias?) in a way probe does not see")


def parity(module, model, forward, emb, recurrent, head, reference: str = "forward", seed: int = 0) -> dict:
    """The largest |log p| difference between the user's scores and the adapted model's, on
    random ids and on a text of the vocabulary's tokens; one line if over the tolerance."""
    V = len(model.vocab)
    gen = torch.Generator().manual_seed(seed)
    known = sample_ids(model.tokenizer)
    text = torch.tensor(known if len(known) >= 16 else torch.randint(V, (64,), generator=gen).tolist())
    checks = {"random ids": torch.randint(V, (2, 64), generator=gen), "a text": text[None]}
    worst = {}
    device = device_of(module)
    for what, ids in checks.items():
        theirs = _scores(forward, ids, device, V)
        with torch.no_grad():
            mine = torch.log_softmax(recurrence.run(model, ids)[0], -1)
        gap = (mine - theirs).abs()
        d = float(gap.max())
        worst[what] = d
        if not bool((gap <= TOLERANCE + RELATIVE * theirs.abs()).all()):
            why = where_it_differs(module, emb, recurrent, head, model, forward, ids, V)
            raise ProbeError(f"log-probabilities differ by {d:.3g} on {what} (tolerance {TOLERANCE:g} + "
                             f"{RELATIVE:g} x |log p|): {why}")
    return {"max_abs_diff": max(worst.values()), "tolerance": TOLERANCE, "relative": RELATIVE, "checked": worst,
            "reference": reference}


def adapt(module: nn.Module, vocab, *, forward: Callable | None = None, embed: str | None = None,
          rnn=None, head: str | None = None, source: dict | None = None,
          tokens: str = "chars") -> imported.RecurrentLM:
    """A probe model computing what ``module`` computes, proven on random ids and a text.

    ``vocab``: the tokens in index order: single characters (a string or a list) for
    ``tokens="chars"``; words (``"words"``: whitespace split, ``<eos>`` at line ends) or
    longest-match pieces (``"vocab"``) as a list or a word-LM ``Dictionary``, with ``<unk>``.
    The model keeps the tokenizer, so every command reads text as the model was trained.
    ``forward``: ids [B, T] → the user's scores [B, T, V], their own way (default: the found
    parts composed in order). ``embed``, ``rnn`` (a name or a list), ``head``: module names,
    when the types leave the parts open. Every API and command takes the result."""
    if not isinstance(module, nn.Module):
        raise ProbeError(f"adapt takes an nn.Module, got {type(module).__name__}")
    label = (source or {}).get("vocab")  # the vocabulary's file, named in its errors
    try:
        tokenizer = vocabulary(vocab, tokens)
        V = len(tokenizer.vocab)
        emb, recurrent, out = find_parts(module, V, embed, rnn, head)
        check_shapes(emb, recurrent, out, V)
    except ProbeError as e:
        raise ProbeError(f"{label}: {e}" if label and "vocabulary" in str(e) else str(e)) from None
    model = imported.build(config_of(tokenizer, emb, recurrent, out, source or {}))
    copy_weights(model, emb, recurrent, out)
    model.eval()
    was_training = module.training
    module.eval()  # dropout off, as probe runs it
    try:
        ref = forward if forward is not None else composed(emb, recurrent, out, V)
        model.config["parity"] = parity(module, model, ref, emb, recurrent, out,
                                        "forward" if forward is not None else "parts")
    finally:
        module.train(was_training)
    return model
