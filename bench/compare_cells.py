"""LSTM, GRU and vanilla RNN side by side (Karpathy, Johnson & Fei-Fei, Table 1 in small).

    python bench/compare_cells.py [--models lstm gru rnn] [--chars 200000] [--out docs/img]

For each model (a shipped name or a checkpoint path): parameters, training characters and
time, test bits/char (from its checkpoint), the best single cell per feature on the first
``--chars`` characters of the stdlib test split (recorded into a temporary folder and
analysed: hidden-state units for GRU and RNN, every stream for the LSTM), the mean gate
saturation per layer and gate, and the gradient flow (mean ‖∂loss_t/∂h_{t−k}‖ for
k = 0…200 over 250 positions of the first 20,000 characters). Writes
``gradient-flow.png`` (all models on one log-scale plot) when Chromium is there.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from probe import load_model, open_recording
from probe.analysis import cache as analysis
from probe.analysis import detectors
from probe.causal import gradients
from probe.output import browser
from probe.recording.record import record
from probe.text import corpus


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["lstm", "gru", "rnn"], help="names or checkpoint paths")
    p.add_argument("--chars", type=int, default=200_000, help="test characters recorded per model")
    p.add_argument("--out", default="docs/img", help="where gradient-flow.png goes")
    a = p.parse_args()
    test = corpus.stdlib("test")
    docs = test.limited(a.chars).documents
    flows = {}
    print("| model | parameters | training characters | training time | test bits/char |")
    print("|---|---|---|---|---|")
    rows = []
    for name in a.models:
        model = load_model(name)
        m = model.metrics
        label = f"{model.cell} {model.layers} × {model.units}"
        params = sum(t.numel() for t in model.parameters())
        print(f"| {label} | {params:,} | {m.get('chars', 0) / 1e6:.1f}M | "
              f"{m.get('train_seconds', 0) / 60:.0f} min | {m.get('test_bpc', float('nan')):.3f} |")
        rows.append((label, model))
        flows[label] = gradients.flow(model, test.limited(20_000).text, span=200, positions=250)
    for label, model in rows:
        with tempfile.TemporaryDirectory() as tmp:
            rec = Path(tmp) / "rec.h5"
            record(model, docs, rec, progress=False)
            with open_recording(rec) as r:
                res = analysis.analysis(r)
            best = detectors.best(res["scores"], top=1)
            print(f"\n{label}: best single cell per feature on {a.chars:,} test characters")
            for b in best.itertuples():
                score = f"AUC {b.score:.3f}" if b.metric == "auc" else f"r {b.score:+.3f}"
                print(f"  {b.feature:<16} {b.layer}, {b.stream}, {b.unit:<4} {score}")
            sat = detectors.saturation_summary(res["saturation"])
            if not sat.empty:
                print("  saturation (mean fraction of characters < 0.1 / > 0.9):")
                for s in sat.itertuples():
                    print(f"    layer {s.layer} {s.stream}: {s.left:.3f} / {s.right:.3f}")
    print("\ngradient flow, mean |d loss_t / d h_(t-k)| of the top layer:")
    for label, f in flows.items():
        top = [r for r in f["layers"] if r["stream"] == "h"][-1]["mean"]
        print(f"  {label:<16} " + "  ".join(f"k={k}: {top[k]:.2e}" for k in (0, 5, 20, 50, 100, 200)))
    if browser.available():
        plot(flows, Path(a.out) / "gradient-flow.png")


def plot(flows: dict, png: Path) -> None:
    from bokeh.io import export_png
    from bokeh.plotting import figure
    os.environ.setdefault("BOKEH_IN_DOCKER", "1")  # root: chromium needs --no-sandbox
    p = figure(width=640, height=380, y_axis_type="log", x_axis_label="k (steps back)",
               y_axis_label="mean ‖∂loss_t / ∂h_(t−k)‖, top layer", toolbar_location=None,
               title="How far back the loss reaches")
    for (label, f), color in zip(flows.items(), ("#1b9e77", "#d95f02", "#7570b3", "#e7298a")):
        top = [r for r in f["layers"] if r["stream"] == "h"][-1]
        p.line(f["k"], [max(v, 1e-12) for v in top["mean"]], color=color, line_width=2, legend_label=label)
        if any(r["stream"] == "c" for r in f["layers"]):
            c = [r for r in f["layers"] if r["stream"] == "c"][-1]
            p.line(f["k"], [max(v, 1e-12) for v in c["mean"]], color=color, line_dash="dashed",
                   line_width=2, legend_label=f"{label}: cell state c")
    p.legend.location = "bottom_left"
    png.parent.mkdir(parents=True, exist_ok=True)
    export_png(p, filename=str(png))
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
