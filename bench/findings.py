"""Findings on a recording: the best cell per feature, checked against the targets, with
pictures of each cell over real text (the paper's figure) for the README.

    python bench/findings.py recordings/stdlib-test.h5 [--img docs/img] [--derived distributed.json]

Prints a Markdown table (best single cell per feature, AUC or |r|, target, met?), the
gate-saturation summary, and the linear-probe curve for the headline features; writes
a PNG of each cell over real text (`probe render`'s page, shot with headless Debian
chromium), `profiles.png` (the column and bracket cells against their feature: mean and
spread) and `saturation.png` (Karpathy et al. Fig. 3). With `--derived`, then the
per-feature table of a `bench/distributed.py --json` run (probe directions and a sparse
dictionary against the best single cell, on text the model never trained on).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from windows import window_for  # bench/windows.py (a script's folder is on sys.path)

from probe import open_recording
from probe.analysis import cache as analysis
from probe.analysis import detectors
from probe.analysis.detectors import auc_exact
from probe.output import browser
from probe.output.render import standalone_page
from probe.readout import probes

TARGETS = {"in_short_string": ("auc", 0.97), "in_comment": ("auc", 0.95),
           "column": ("r", 0.85), "bracket_depth": ("r", 0.8)}
SHOWN = ["in_short_string", "in_long_string", "in_comment", "column", "line_length",
         "bracket_depth", "indent"]
def where_wrong(rec, feats, b) -> str:
    """Where a binary feature's best cell errs: its positives that look negative (below the
    negatives' 75th percentile) and negatives that look positive (above the positives' 25th),
    by kind of character or context. Says whether a better model or a different label helps."""
    y = feats[b.feature].to_numpy() != 0
    x = rec.unit(int(b.layer), b.stream, int(b.unit)).astype(np.float64)
    if b.score < 0.5:
        x = -x
    codes = rec.codepoints
    quote = (codes == ord("'")) | (codes == ord('"'))
    closing = ~y & quote & np.r_[False, y[:-1]]  # a literal's closing quote: outside, by the convention
    pos_low = y & (x < np.percentile(x[~y], 75))
    neg_high = ~y & (x > np.percentile(x[y], 25))
    quotes = f" ({closing[neg_high].mean():.0%} of them closing quotes)" if "string" in b.feature else ""
    lines = [f"{b.feature}, layer {b.layer} {b.stream} {b.unit}: "
             f"{pos_low.sum():,} of {y.sum():,} positives look negative; "
             f"{neg_high.sum():,} of {(~y).sum():,} negatives look positive{quotes}"]
    for other in ("in_comment", "in_long_string", "in_short_string"):
        if other != b.feature and other in feats:
            lines.append(f"  {feats[other].to_numpy()[neg_high].mean():.0%} of those are {other}")
    if b.feature == "in_short_string":  # the same cell, scored on parts of the text
        prose = (feats["in_comment"].to_numpy() != 0) | (feats["in_long_string"].to_numpy() != 0)
        lines.append(f"  AUC {auc_exact(x, y):.3f}; on code only (comments and docstrings left out) "
                     f"{auc_exact(x[~prose], y[~prose]):.3f}")
    if b.feature == "in_comment":  # is it a comment cell or a prose cell?
        doc = feats["in_long_string"].to_numpy() != 0
        lines.append(f"  AUC {auc_exact(x, y):.3f}; without docstrings {auc_exact(x[~doc], y[~doc]):.3f}; "
                     f"as a detector of prose (comment or docstring) {auc_exact(x, y | doc):.3f}")
    return "\n".join(lines)


def profile(rec, feats, b, cap: int) -> list[tuple[int, int, float, float, float]]:
    """The best cell of a counting feature, per feature value v <= cap (the last bin holds
    v >= cap): (v, characters, mean, 10th and 90th percentile of the cell)."""
    v = np.minimum(feats[b.feature].to_numpy(), cap)
    x = rec.unit(int(b.layer), b.stream, int(b.unit)).astype(np.float64)
    rows = []
    for value in np.unique(v):
        xs = x[v == value]
        if len(xs) >= 20:
            rows.append((int(value), len(xs), xs.mean(), *np.percentile(xs, [10, 90])))
    return rows


def profile_plot(profiles: dict, png: Path) -> None:
    """Mean and 10–90 % band of each counting cell against its feature."""
    from bokeh.io import export_png
    from bokeh.layouts import row
    from bokeh.plotting import figure
    os.environ.setdefault("BOKEH_IN_DOCKER", "1")
    figs = []
    for feature, (b, rows) in profiles.items():
        v, _, mean, lo, hi = (np.array(c) for c in zip(*rows))
        p = figure(width=450, height=300, toolbar_location=None, x_axis_label=feature,
                   y_axis_label=f"layer {b.layer} {b.stream} {b.unit}",
                   title=f"{feature}: layer {b.layer} {b.stream} {b.unit}, r {b.score:+.3f}")
        p.varea(v, lo, hi, color="#9ecae1", alpha=0.6, legend_label="10–90 % of characters")
        p.line(v, mean, color="#08519c", line_width=2, legend_label="mean")
        p.legend.location = "bottom_left" if b.score < 0 else "top_left"
        p.legend.visible = not figs  # one legend is enough
        figs.append(p)
    export_png(row(*figs), filename=str(png))


def saturation_plot(sat, png: Path) -> None:
    from bokeh.io import export_png
    from bokeh.layouts import row
    from bokeh.plotting import figure
    os.environ.setdefault("BOKEH_IN_DOCKER", "1")  # root: chromium needs --no-sandbox
    colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"]
    figs = []
    for gate in sat.stream.unique():
        p = figure(width=300, height=300, title=f"{gate} gate", x_range=(0, 1), y_range=(0, 1),
                   x_axis_label="fraction left-saturated (< 0.1)",
                   y_axis_label="fraction right-saturated (> 0.9)", toolbar_location=None)
        p.line([0, 1], [1, 0], color="#bbbbbb")
        for k in sorted(sat.layer.unique()):
            d = sat[(sat.stream == gate) & (sat.layer == k)]
            p.scatter(d.left, d.right, size=5, alpha=0.6, color=colors[k % 4], legend_label=f"layer {k}")
        p.legend.location = "top_right"
        figs.append(p)
    export_png(row(*figs), filename=str(png))


def derived_findings(path: str) -> None:
    """The per-feature table of a `bench/distributed.py --json` run (best single cell, probe
    direction, best dictionary feature, each scored on the hidden text), as that script
    prints it (its own table builder)."""
    import json
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from distributed import KIND, markdown_table, table_note
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"findings.py: error: {path}: not readable JSON ({e})") from None
    if not isinstance(result, dict) or result.get("kind") != KIND:
        raise SystemExit(f"findings.py: error: {path}: not the JSON of bench/distributed.py --json")
    print(f"\ndistributed features ({path}): best single cell, probe direction and best dictionary "
          "feature, each scored on text the model never trained on\n")
    print(markdown_table(result))
    print("\n" + table_note(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recording")
    p.add_argument("--img", default="docs/img")
    p.add_argument("--causal-chars", type=int, default=20_000,
                   help="characters the ablation of the best cells reads (default 20000)")
    p.add_argument("--derived", metavar="DISTRIBUTED_JSON",
                   help="also print the per-feature table of a `bench/distributed.py --json` run, at the end")
    a = p.parse_args()
    img = Path(a.img)
    img.mkdir(parents=True, exist_ok=True)
    with open_recording(a.recording) as rec:
        res = analysis.analysis(rec, progress=True)
        best = detectors.best(res["scores"], top=1)
        effect = analysis.causal(rec, best, chars=a.causal_chars, progress=True).set_index("feature")
        feats = detectors.default_features(rec)
        print(f"{rec.path.name}: {len(rec):,} characters, {rec.layers} layers x {rec.units} units\n")
        print("| feature | best cell (layer, stream, unit) | score | ablated: Δ bits/char where it holds "
              "(× the median of 32 random units) | target | met |")
        print("|---|---|---|---|---|---|")
        for _, b in best.iterrows():
            if b.metric == "auc":
                score, strength = f"AUC {b.score:.3f}", max(b.score, 1 - b.score)
            else:
                score, strength = f"r {b.score:+.3f}", abs(b.score)
            metric, goal = TARGETS.get(b.feature, (None, None))
            label = "AUC" if metric == "auc" else "\\|r\\|"  # escaped: inside a Markdown table
            target = f"{label} ≥ {goal}" if goal else ""
            met = ("yes" if strength >= goal else "**no**") if goal else ""
            causal = ""
            if b.feature in effect.index:
                e = effect.loc[b.feature]
                causal = f"{e.delta_bits:+.3f} ({e.ratio:.0f}×)"
            print(f"| {b.feature} | {b.layer}, {b.stream}, {b.unit} | {score} | {causal} | {target} | {met} |")
        print("\nAUC below 0.5 means the cell is *off* where the feature is on (ranked by distance from 0.5). "
              f"Ablated: the cell pinned to 0 (c: its cell state, else its h) on the first {a.causal_chars:,} "
              "characters; the change in the cost of the next character where the feature holds.")
        print("\nwhere the best cell errs:")
        for feature in ("in_short_string", "in_comment"):
            print(where_wrong(rec, feats, best[best.feature == feature].iloc[0]))
        print("\nsaturation (mean fraction of characters per gate):")
        print(detectors.saturation_summary(res["saturation"]).to_string(index=False))
        profiles = {}
        for feature, cap in (("column", 100), ("bracket_depth", 6)):
            b = best[best.feature == feature].iloc[0]
            rows = profile(rec, feats, b, cap)
            profiles[feature] = (b, rows)
            print(f"\n{feature} cell, layer {b.layer} {b.stream} {b.unit}: mean [10th, 90th percentile] "
                  f"by {feature} (last bin: >= {cap})")
            print("  " + "; ".join(f"{v}: {m:+.2f} [{lo:+.2f}, {hi:+.2f}]" for v, _, m, lo, hi in rows
                                   if feature != "column" or v % 10 == 0 or v == cap))
        for feature in ("in_short_string", "column", "bracket_depth"):
            curve = probes.probe_curve(rec, feats, feature, layers=None, streams=("c", "h"))
            print(f"\nlinear probe on the top-k cells, {feature} (held out: 20% of the text, in pieces from all over it):")
            print("  " + ", ".join(f"k={int(r.k)}: {r.metric} {r.score:.3f}" for r in curve.itertuples()))
        if not browser.available():  # the pictures are shot with it (and Bokeh's export)
            print(f"\nno pictures: {browser.CHROMIUM} not found (Debian: apt-get install chromium chromium-driver)")
            if a.derived:
                derived_findings(a.derived)
            return
        for feature in SHOWN:
            b = best[best.feature == feature].iloc[0]
            start = window_for(rec, feats, feature)
            stop = min(len(rec), start + 1000)
            values = rec.unit(int(b.layer), b.stream, int(b.unit), start, stop)
            title = (f"{feature}: layer {b.layer}, stream {b.stream}, unit {b.unit} "
                     f"({b.metric} {b.score:.3f}), characters {start:,}–{stop:,}")
            with tempfile.TemporaryDirectory() as tmp:  # the page is only a step to the PNG
                html = Path(tmp) / f"cell-{feature}.html"
                html.write_text(standalone_page(rec.text[start:stop], values, b.stream, title),
                                encoding="utf-8")
                browser.screenshot(html, img / f"cell-{feature}.png")
            print(f"wrote {img / f'cell-{feature}.png'}")
    profile_plot(profiles, img / "profiles.png")
    print(f"wrote {img / 'profiles.png'}")
    saturation_plot(res["saturation"], img / "saturation.png")
    print(f"wrote {img / 'saturation.png'}")
    if a.derived:
        derived_findings(a.derived)


if __name__ == "__main__":
    main()
