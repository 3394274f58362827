"""The patching findings of docs/findings.md, on held-out code: Python the models never saw
(by default the installed ``bokeh`` package's source, other people's code, not the stdlib).

    python docs/patching_findings.py [--text DIR] [--pairs 100] [--models lstm gru rnn] [--json out.json]

For each model and each of in_short_string, in_comment and bracket_depth: pairs made from
the text (``probe.causal.pairs``), every unit of every layer's memory stream (an LSTM's c,
the others' h) patched over the whole span (``probe.causal.patch.effects``, 16 random
controls per layer), the three cells of largest |effect| with their IIA and single-cell AUC,
and the feature's read-out AUC. For in_short_string, the top cell patched one position at
a time, 0..23 steps back ("for how many steps is it carried?": the last step back at which
the effect is still at least half of the largest). For the LSTM, the top in_short_string
cell's circuit at 20 positions inside strings (``probe.causal.circuit``): its most frequent
upstream cells and the check's ratio. Prints markdown; ``--json`` keeps the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

import numpy as np

from probe import load_model
from probe.causal import circuit, pairs, patch
from probe.readout.readable import readable
from probe.text import corpus, features

FEATURES = ("in_short_string", "in_comment", "bracket_depth")
STEPS_BACK = 24


def held_out() -> str:
    import bokeh
    return os.path.dirname(bokeh.__file__)


def carried(heat: list[float]) -> int:
    """The last step back whose effect is at least half the largest (same sign)."""
    h = np.asarray(heat)
    peak = h[np.argmax(np.abs(h))]
    ok = np.flatnonzero(h * np.sign(peak) >= 0.5 * abs(peak))
    return int(ok.max()) if len(ok) else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", default=None, help="a folder of Python files (default: the bokeh package)")
    p.add_argument("--chars", type=int, default=400_000)
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--models", nargs="+", default=["lstm", "gru", "rnn"])
    p.add_argument("--json", help="write the numbers here")
    a = p.parse_args()
    text = a.text or held_out()
    docs = corpus.load(None, "test", text=text, glob="**/*.py").limited(a.chars).documents
    out = {"text": text, "chars": sum(len(t) for _, t in docs), "models": {}}
    print(f"held-out text: {len(docs)} files, {out['chars']:,} characters from {text}\n")
    for name in a.models:
        model = load_model(name)
        stream = "c" if model.cell == "lstm" else "h"
        res = out["models"][name] = {}
        for feature in FEATURES:
            t0 = time.perf_counter()
            made, rep = pairs.pairs(feature, docs, a.pairs, 0)
            rows = []
            for layer in range(model.layers):
                rows += patch.effects(model, made, layer=layer, stream=stream, random=16)["rows"]
            top = sorted(rows, key=lambda r: -abs(r["effect_bits"]))[:3]
            read = readable(model, docs, feature, cells=[(r["layer"], r["stream"], r["unit"]) for r in top])
            aucs = read.pop("cells")
            entry = {"pairs": len(made), "offered": rep["offered"], "read": read,
                     "top": [{**r, "auc": aucs[(r["layer"], r["stream"], r["unit"])]} for r in top]}
            if feature == "in_short_string":
                best = top[0]
                heat = patch.effects(model, made, [(best["layer"], best["stream"], best["unit"])], random=0,
                                     steps_back=STEPS_BACK)["heat"][0]["effects"]
                entry["steps_back"] = heat
                entry["carried"] = carried(heat)
            res[feature] = entry
            print(f"{name} {feature}: {len(made)} pairs, {time.perf_counter() - t0:.0f} s", flush=True)
        if name == "lstm":
            best = res["in_short_string"]["top"][0]
            cell = (best["layer"], best["stream"], best["unit"])
            full = "".join(t for _, t in docs[:40])
            inside = np.flatnonzero(features.compute(full, ["in_short_string"])["in_short_string"].to_numpy())
            rng = np.random.default_rng(0)
            ats = sorted(rng.choice(inside[inside > 200], min(20, len(inside)), replace=False).tolist())
            nodes, ratios = Counter(), []
            for at in ats:
                c = circuit.circuit(model, full, cell, int(at), steps=20, top=10)
                ratios.append(c["check"]["ratio"])
                for e in c["edges"]:
                    f = e["from"]
                    nodes[f"{f['layer']}:{f['stream']}:{f['unit']}"] += 1
            res["circuit"] = {"cell": "%d:%s:%d" % cell, "positions": len(ats), "common": nodes.most_common(8),
                              "ratio_median": float(np.median(ratios)), "ratio_min": float(np.min(ratios))}
    print(markdown(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


def markdown(out: dict) -> str:
    lines = ["| model | feature | pairs | top cells by patching effect (bits; IIA; single-cell AUC) | best cell's AUC "
             "by its reading | read-out AUC |", "|---|---|---|---|---|---|"]
    for name, res in out["models"].items():
        for feature in FEATURES:
            e = res[feature]
            cells = "; ".join(f"{r['layer']}:{r['stream']}:{r['unit']} {r['effect_bits']:+.2f} "
                              f"({r['random_median']:.3f} random; IIA {r['iia']:.2f}; AUC {r['auc']:.2f})" for r in e["top"])
            lines.append(f"| {name} | {feature} | {e['pairs']} of {e['offered']:,} | {cells} | "
                         f"{e['read']['best_cell']} {e['read']['best_cell_auc']:.3f} | {e['read']['direction_auc']:.3f} |")
    lines += ["", "| model | top in_short_string cell | effect by steps back (0: the state that predicts the closing "
              "quote) | carried for |", "|---|---|---|---|"]
    for name, res in out["models"].items():
        e = res["in_short_string"]
        r = e["top"][0]
        lines.append(f"| {name} | {r['layer']}:{r['stream']}:{r['unit']} | "
                     + " ".join(f"{v:+.2f}" for v in e["steps_back"][:12]) + f" … | {e['carried']} steps |")
    if "circuit" in out["models"].get("lstm", {}):
        c = out["models"]["lstm"]["circuit"]
        lines += ["", f"LSTM circuit of {c['cell']} at {c['positions']} positions inside strings: upstream cells "
                  "most often among the top 10: " + ", ".join(f"{n} ({k})" for n, k in c["common"]) +
                  f"; zeroing the top 10 against 10 random upstream nodes: median ratio {c['ratio_median']:.1f} "
                  f"(smallest {c['ratio_min']:.1f})"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
