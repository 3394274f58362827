"""Distributed features: probe directions and a sparse dictionary, fitted on stdlib, checked
on text the model never trained on.

    probe record --split train --limit 1000000 --compression none --out fit.h5
    python bench/distributed.py --fit fit.h5 [--hidden-text DIR] [--img docs/img] [--json]

One run, every step timed against a baseline measured in the same run:

1. records the hidden text (default: the installed ``tornado`` package, ``**/*.py``, the
   first ``--hidden-chars`` characters) with the shipped model, with the fit recording's
   compression, dtype and checksums: the baseline for encoding;
2. reads the fit recording's c and h of every layer once, in chunks, as float32 (c through
   tanh, as ``derived.read_inputs`` gives them), timed twice (the faster is kept): the
   baseline for fitting;
3. fits probe directions (``directions.fit``, ``--sample`` positions) and saves them;
4. trains a dictionary of ``--layer``'s ``--stream`` (``dictionary.train``: its own
   held-out quality included, timed apart, run on one torch thread: see QUALITY_THREADS);
5. encodes both into the hidden recording (``derived.encode``): their time as a fraction of
   the hidden recording's (goal <= 0.2 added);
6. per built-in feature that varies on the hidden text: the best single recorded cell
   (chosen on the fit recording: its cached analysis, rank 1), the probe direction, and
   the best dictionary feature (chosen on ``--select-rows`` rows of the fit recording),
   each scored on the hidden text: max(AUC, 1 - AUC) for a binary feature, |r| for a count
   (``flipped``: the cell or dictionary feature points the other way on the hidden text
   than on the fit recording, so max() flatters it);
7. the dictionary's quality on the hidden text (``dictionary.quality``, on one torch thread);
8. removes each headline feature's direction while the model reads the hidden text
   (``directions.ablate``, c and h blocks, then h only), against ``--random`` directions;
9. peak RSS and every time; ``--json`` prints it all as one JSON object (which
   ``bench/findings.py --derived`` reads back, and ``--report`` prints as text again);
10. with ``--img DIR``: ``direction-column.png`` and ``direction-bracket_depth.png``, the
    hidden text coloured by the direction (top) and by the best single cell (below).

Files (the directions, the dictionary, the hidden recording) go to ``--work`` (default: a
temporary folder, removed at the end); files of those names there are replaced. The fit
recording gets its analysis cache beside it (``probe analyze``'s), if it has none yet.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from windows import window_for  # bench/windows.py (a script's folder is on sys.path)

from probe import load_model, open_recording
from probe.analysis import cache as analysis
from probe.analysis import detectors
from probe.errors import ProbeError
from probe.output import browser
from probe.readout import dictionary, directions
from probe.recording import derived, h5format
from probe.recording.record import record
from probe.text import corpus as corpora
from probe.text import features as features_mod

KIND = "probe bench/distributed.py"
VERSION = 1
GOALS = {"in_comment": ("auc", 0.97), "in_short_string": ("auc", 0.98), "column": ("r", 0.88),
         "bracket_depth": ("r", 0.8)}
QUALITY_GOALS = {"explained_variance": (">=", 0.9), "l0": None, "dead_fraction": ("<=", 0.1),
                 "loss_recovered": (">=", 0.9)}
ABLATED = ["in_short_string", "in_comment", "column", "bracket_depth"]
PICTURED = ["column", "bracket_depth"]
ENCODE_GOAL = 0.2  # encoding both derived streams: at most 20 % of recording the text
PICTURE_LINES = 25
# where a picture's window is placed: where this feature varies most (``window_for``); the
# column changes at every character, so its window goes where the indentation varies
WINDOW_BY = {"column": "indent"}
# torch threads for the step-by-step loss of ``dictionary.quality``: with more, each tiny
# step synchronises threads, and with a busy second core it ran about 100 times slower
QUALITY_THREADS = 1


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


@contextmanager
def torch_threads(n: int | None):
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timed(times: dict, key: str):
    """A context manager adding the seconds of its block to ``times[key]``."""
    @contextmanager
    def block():
        t0 = time.perf_counter()
        try:
            yield
        finally:
            times[key] = times.get(key, 0.0) + time.perf_counter() - t0
    return block()


def plain(v):
    """JSON-able: numpy scalars as Python ones, NaN and inf as None."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return plain(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# ---- scores -----------------------------------------------------------------------------------

def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x.astype(np.float64) - x.mean(dtype=np.float64)
    y = y.astype(np.float64) - y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / den) if den > 0 else float("nan")


def score(x: np.ndarray, y: np.ndarray, binary: bool) -> float:
    """AUC (``detectors.auc_exact``) for a 0/1 feature, Pearson r for a count."""
    return detectors.auc_exact(x.astype(np.float64), y != 0) if binary else pearson(x, y)


def strength(value: float, metric: str) -> float:
    """max(AUC, 1 - AUC) or |r|: how well it separates, whichever way it points."""
    if value is None or not np.isfinite(value):
        return float("nan")
    return max(value, 1 - value) if metric == "auc" else abs(value)


def flipped(fit_value: float, value: float, metric: str) -> bool:
    """Whether the hidden-text score points the other way than the fit one."""
    mid = 0.5 if metric == "auc" else 0.0
    if not (np.isfinite(fit_value) and np.isfinite(value)):
        return False
    return (fit_value - mid) * (value - mid) < 0


def sparse_scores(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int, F: int,
                  Y: np.ndarray, binary: list[bool]) -> np.ndarray:
    """Scores [F, labels] of every column of a sparse nonnegative matrix (the nonzero
    entries rows, cols, vals of an [n, F] code matrix) against each label column of Y [n, L]:
    AUC with average ranks for ties (``auc_exact``'s value: the zeros of a column are one run
    of ties below its nonzeros) for a binary label, Pearson r for the others. NaN for a column
    with no nonzero entry (a feature dead on these rows)."""
    order = np.lexsort((vals, cols))
    r, c, v = rows[order], cols[order], vals[order].astype(np.float64)
    nnz = np.bincount(c, minlength=F)
    n0 = n - nnz
    col_start = np.concatenate([[0], np.cumsum(nnz)[:-1]])
    # average 1-based rank of each entry among its column's nonzeros (ties: runs of equal (c, v))
    new_run = np.r_[True, (c[1:] != c[:-1]) | (v[1:] != v[:-1])]
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], len(c)]
    lengths = ends - starts
    within = starts - col_start[c[starts]]
    rank = np.repeat(within + (lengths + 1) / 2.0, lengths)
    out = np.full((F, Y.shape[1]), np.nan)
    sx = np.bincount(c, weights=v, minlength=F)
    sxx = np.bincount(c, weights=v * v, minlength=F)
    alive = nnz > 0
    for j in range(Y.shape[1]):
        y = Y[:, j].astype(np.float64)
        yr = y[r]
        if binary[j]:
            pos = y != 0
            P, N = int(pos.sum()), int(n - pos.sum())
            if P == 0 or N == 0:
                continue
            p_nz = np.bincount(c, weights=yr != 0, minlength=F)
            s_nz = np.bincount(c, weights=(yr != 0) * (n0[c] + rank), minlength=F)
            S = s_nz + (P - p_nz) * (n0 + 1) / 2.0
            out[alive, j] = ((S - P * (P + 1) / 2.0) / (P * N))[alive]
        else:
            my = y.mean()
            vy = float(((y - my) ** 2).mean())
            sxy = np.bincount(c, weights=v * yr, minlength=F)
            mx = sx / n
            cov = sxy / n - mx * my
            vx = sxx / n - mx * mx
            with np.errstate(invalid="ignore", divide="ignore"):
                rr = cov / np.sqrt(vx * vy)
            out[alive, j] = rr[alive]
    return out


def sample_blocks(T: int, rows: int, seed: int = 0, block: int = h5format.CHUNK_T) -> list[tuple[int, int]]:
    """[start, stop) of random aligned blocks of ``block`` rows, about ``rows`` in all, sorted
    (the whole recording if it is shorter)."""
    starts = np.arange(0, T, block)
    need = -(-rows // block)
    if need < len(starts):
        starts = np.sort(np.random.default_rng(seed).choice(starts, need, replace=False))
    return [(int(a), int(min(a + block, T))) for a in starts]


def choose_dictionary_features(fit, spec: dict, feats, names: list[str], rows: int, seed: int = 0) -> dict:
    """Per label, the dictionary feature that scores best (max(AUC, 1 - AUC) or |r|) on
    about ``rows`` rows of the fit recording (random aligned blocks; codes from
    ``dictionary.transform`` of ``derived.read_inputs``, one block at a time, kept sparse)."""
    F = len(spec["unit_names"])
    rs, cs, vs, offset = [], [], [], 0
    picked = []
    for a, b in sample_blocks(len(fit), rows, seed):
        codes = dictionary.transform(spec, derived.read_inputs(fit, spec["inputs"], a, b))
        r, c = np.nonzero(codes)
        rs.append(r + offset)
        cs.append(c)
        vs.append(codes[r, c])
        picked.append(np.arange(a, b))
        offset += b - a
    rows_at = np.concatenate(picked)
    Y = np.stack([feats[n].to_numpy()[rows_at] for n in names], axis=1)
    binary = [features_mod.is_binary(n) for n in names]
    sc = sparse_scores(np.concatenate(rs), np.concatenate(cs), np.concatenate(vs), len(rows_at), F, Y, binary)
    out = {}
    for j, name in enumerate(names):
        metric = "auc" if binary[j] else "r"
        s = np.array([strength(x, metric) for x in sc[:, j]])
        if not np.isfinite(s).any():
            continue
        u = int(np.nanargmax(s))
        out[name] = {"unit": u, "feature": str(spec["unit_names"][u]), "fit_score": float(sc[u, j]),
                     "fit_strength": float(s[u]), "fit_rows": int(len(rows_at)),
                     "fit_alive": int(np.isfinite(sc[:, j]).sum())}
    return out


# ---- the table (shared with bench/findings.py --derived) --------------------------------------

def _fmt(value, metric: str) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.3f}"


def markdown_table(result: dict) -> str:
    """The per-feature table of a run (``main``'s JSON): best single cell, probe direction and
    best dictionary feature, each scored on the hidden text, against the goals."""
    lines = ["| feature | metric | best cell (which) | direction | best dictionary feature (which) | goal | met? |",
             "|---|---|---|---|---|---|---|"]
    for row in result["features"]:
        metric = row["metric"]
        label = "AUC" if metric == "auc" else "\\|r\\|"
        cell, dirn, dic = row.get("cell"), row.get("direction"), row.get("dictionary")

        def part(d, which):
            if not d:
                return "–"
            mark = " (flipped)" if d.get("flipped") else ""
            return f"{_fmt(d.get('strength'), metric)}{mark} ({which(d)})" if which else \
                f"{_fmt(d.get('strength'), metric)}{mark}"
        goal = row.get("goal")
        met = "–"
        if goal is not None:
            verdicts = []
            for name, d in (("dir", dirn), ("dict", dic)):
                s = (d or {}).get("strength")
                ok = s is not None and np.isfinite(s) and s >= goal
                verdicts.append(f"{name} {'yes' if ok else '**no**'}")
            met = ", ".join(verdicts)
        def cell_name(d):
            return f"{d['layer']}, {d['stream']}, {d['unit']}"

        goal_text = f"{label} ≥ {goal}" if goal is not None else "–"
        lines.append(f"| {row['feature']} | {label} | {part(cell, cell_name)} | {part(dirn, None)} "
                     f"| {part(dic, lambda d: d['feature'])} | {goal_text} | {met} |")
    return "\n".join(lines)


def table_note(result: dict) -> str:
    s = result.get("settings", {})
    return (f"Scored on {result['hidden']['characters']:,} characters of {result['hidden']['name']} "
            f"(never trained on); chosen or fitted on {result['fit']['name']} "
            f"({result['fit']['characters']:,} characters of stdlib). AUC as max(AUC, 1 − AUC), r as |r|; "
            "(flipped): points the other way on the hidden text than where it was chosen. "
            f"Dictionary: layer {s.get('layer')} {s.get('stream')}, {s.get('features')} features, "
            f"k {s.get('k')}, {s.get('steps')} steps.")


# ---- pictures -------------------------------------------------------------------------------

def picture_window(rec, feats, feature: str, lines: int = PICTURE_LINES) -> tuple[int, int]:
    """[start, stop) of ``lines`` whole lines inside one document, where the feature varies
    (``bench/windows.py``'s ``window_for`` of ``WINDOW_BY``'s feature, then snapped to line
    starts)."""
    text = rec.text
    start = window_for(rec, feats, WINDOW_BY.get(feature, feature), length=60 * lines)
    if start > 0 and text[start - 1] != "\n":
        nl = text.find("\n", start)
        start = nl + 1 if nl >= 0 else start
    doc = int(rec.document_of([start])[0])
    doc_stop = int(rec.documents["stop"].iloc[doc])
    stop = start
    for _ in range(lines):
        nl = text.find("\n", stop, doc_stop)
        if nl < 0:
            stop = doc_stop
            break
        stop = nl + 1
    return start, max(stop, start + 1)


def picture(rec, feats, result: dict, feature: str, png: Path) -> Path | None:
    """The hidden text twice: coloured by the feature's direction, then by its best single cell."""
    from probe.output import render
    row = next((r for r in result["features"] if r["feature"] == feature), None)
    if row is None or not row.get("direction") or not row.get("cell"):
        return None
    start, stop = picture_window(rec, feats, feature)
    text = rec.text[start:stop]
    d, c = row["direction"], row["cell"]
    dv = rec.unit(int(d["layer"]), d["stream"], int(d["unit"]), start, stop)
    cv = rec.unit(int(c["layer"]), c["stream"], int(c["unit"]), start, stop)
    scale = render.value_scale(dv)
    doc = rec.documents["name"].iloc[int(rec.document_of([start])[0])]
    m = "r" if row["metric"] == "r" else "AUC"
    panels = [
        (f"probe direction: {feature} ({m} = {d['score']:+.3f})",
         render.legend_html(d["stream"], label=f"predicted {feature}", scale=scale),
         render.colored_html(text, dv, d["stream"], start=start, titles=False, scale=scale)),
        (f"best single cell: layer {c['layer']}, stream {c['stream']}, unit {c['unit']} "
         f"({m} = {c['score']:+.3f})",
         render.legend_html(c["stream"]),
         render.colored_html(text, cv, c["stream"], start=start, titles=False)),
    ]
    title = (f"{feature} on text the model never trained on: {doc}, characters {start:,}–{stop:,} "
             f"of {result['hidden']['name']}")
    body = "".join(f'<div class="panel"><h2>{html.escape(t)}</h2>{legend}{colored}</div>'
                   for t, legend, colored in panels)
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n"
            "body { margin: 20px; font-family: sans-serif; }\n"
            "h1 { font-size: 15px; font-weight: 600; margin: 0 0 14px; }\n"
            "h2 { font-size: 14px; font-weight: 600; margin: 0 0 6px; }\n"
            ".panel { margin-bottom: 18px; } .probe-legend { margin-bottom: 6px; }\n"
            f"{render.css()}\n</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            f"{body}\n</body>\n</html>\n")
    n_lines = text.count("\n") + (not text.endswith("\n"))
    widest = max((len(line) for line in text.split("\n")), default=0)
    width = int(min(1800, max(900, widest * 8 + 80)))
    height = int(2 * (n_lines * 19 + 70) + 70)
    with tempfile.TemporaryDirectory() as tmp:
        html_path = Path(tmp) / f"direction-{feature}.html"
        html_path.write_text(page, encoding="utf-8")
        browser.screenshot(html_path, png, window=f"{width},{height}")
    return png


# ---- the run ------------------------------------------------------------------------------------

def hidden_documents(folder: Path, chars: int) -> tuple[list[tuple[str, str]], dict]:
    c = corpora.text_files(folder, glob="**/*.py").limited(chars)
    return c.documents, c.source


def read_baseline(rec, inputs, chunk: int = derived.CHUNK) -> dict[tuple[int, str], float]:
    """Seconds to read each input stream over the whole recording once, ``chunk`` rows at a
    time, as ``derived.read_inputs`` gives it (float32, c through tanh)."""
    out = {}
    T = len(rec)
    for layer, stream in inputs:
        t0 = time.perf_counter()
        for a in range(0, T, chunk):
            derived.read_inputs(rec, [[layer, stream]], a, min(a + chunk, T))
        out[(int(layer), str(stream))] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--fit", metavar="REC",
                   help="a recording of the stdlib training split by the shipped model "
                        "(probe record --split train --limit 1000000 --compression none --out fit.h5)")
    p.add_argument("--hidden-text", metavar="DIR", help="a folder of other Python code (default: the installed "
                   "tornado package); its **/*.py files, sorted")
    p.add_argument("--hidden-chars", type=int, default=100_000, help="characters of it recorded (default 100000)")
    p.add_argument("--layer", type=int, default=1, help="the dictionary's layer (default 1)")
    p.add_argument("--stream", default="c", help="the dictionary's stream (default c)")
    p.add_argument("--size", dest="features", type=int, default=dictionary.FEATURES, help="dictionary size (default 1024)")
    p.add_argument("--k", type=int, default=dictionary.K, help="active dictionary features per position (default 32)")
    p.add_argument("--steps", type=int, default=dictionary.STEPS, help=f"dictionary training steps (default {dictionary.STEPS})")
    p.add_argument("--sample", type=int, default=200_000, help="positions the directions are fitted on (default 200000)")
    p.add_argument("--select-rows", type=int, default=100_000,
                   help="rows of the fit recording the best dictionary feature per label is chosen on (default 100000)")
    p.add_argument("--ablate-chars", type=int, default=20_000, help="characters of the hidden text ablated (default 20000)")
    p.add_argument("--random", type=int, default=16, help="random directions in the ablation (default 16)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads while recording the hidden text (default 1, as probe record); "
                        "the other steps use torch's default, as their probe commands do")
    p.add_argument("--img", metavar="DIR", help="write direction-column.png and direction-bracket_depth.png here")
    p.add_argument("--work", metavar="DIR", help="where the spec files and the hidden recording go "
                   "(default: a temporary folder, removed at the end)")
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    p.add_argument("--report", metavar="JSON", help="print the report of an earlier --json run and stop")
    a = p.parse_args(argv)
    if a.report:
        result = json.loads(Path(a.report).read_text(encoding="utf-8"))
        if not isinstance(result, dict) or result.get("kind") != KIND:
            p.error(f"{a.report}: not the JSON of bench/distributed.py --json")
        print(report(result))
        return 0
    if not a.fit:
        p.error("--fit is required")
    try:
        if a.work:
            Path(a.work).mkdir(parents=True, exist_ok=True)
            return run(a, Path(a.work))
        with tempfile.TemporaryDirectory(prefix="distributed-") as tmp:
            return run(a, Path(tmp))
    except ProbeError as e:
        print(f"distributed.py: error: {e}", file=sys.stderr)
        return 2


def run(a, work: Path) -> int:
    times: dict[str, float] = {}
    progress = sys.stderr.isatty()
    if a.hidden_text:
        folder = Path(a.hidden_text)
    else:
        import tornado
        folder = Path(tornado.__file__).resolve().parent
    model = load_model()
    docs, source = hidden_documents(folder, a.hidden_chars)
    hidden_path, dirs_path, dict_path = work / "hidden.h5", work / "dirs.pt", work / "dict.pt"

    with open_recording(a.fit) as fit:
        fit_info = {"path": str(a.fit), "name": Path(a.fit).name, "characters": len(fit),
                    "compression": fit.compression, "dtype": fit.dtype, "checksums": fit.checksums,
                    "source": fit.source, "model_sha256": fit.model_sha256}
        if fit.model_sha256 and model.sha256 and fit.model_sha256 != model.sha256:
            raise ProbeError(f"{a.fit}: was recorded by another model than the shipped one")
        all_streams = set(fit.streams) == set(h5format.STREAMS[model.cell])
        all_layers = list(fit.layer_ids) == list(range(model.layers))
        rec_kw = dict(compression=fit.compression, dtype=fit.dtype, checksums=fit.checksums == "fletcher32",
                      keep=None if all_streams else list(fit.streams),
                      layers=None if all_layers else list(fit.layer_ids))

    # 1. the hidden text, recorded: the baseline for encoding
    log(f"recording {sum(len(t) for _, t in docs):,} characters of {folder} ...")
    with torch_threads(a.threads), timed(times, "record_hidden"):
        record(model, docs, hidden_path, source=source, force=True, progress=progress, **rec_kw)

    with open_recording(a.fit) as fit:
        T = len(fit)
        inputs = [[k, s] for k in fit.layer_ids for s in ("c", "h") if s in fit.streams]
        # 2. read c and h once: the baseline for fitting (twice, the faster kept)
        log("reading the fit recording's c and h ...")
        reads = [read_baseline(fit, inputs) for _ in range(2)]
        read = {key: min(r[key] for r in reads) for key in reads[0]}
        times["read_fit_inputs"] = sum(read.values())
        read_runs = [sum(r.values()) for r in reads]

        # 3. probe directions
        log("fitting probe directions ...")
        with timed(times, "directions_fit"):
            dspec = directions.fit(fit, sample=a.sample, progress=progress)
        derived.save(dspec, dirs_path)

        # 4. the dictionary (its in-train held-out quality timed apart)
        log("training the dictionary ...")
        original = dictionary.held_out_metrics

        def metrics_timed(*args, **kw):
            with torch_threads(QUALITY_THREADS), timed(times, "dictionary_train_quality"):
                return original(*args, **kw)
        dictionary.held_out_metrics = metrics_timed
        try:
            with timed(times, "dictionary_train"):
                xspec = dictionary.train(fit, a.layer, a.stream, features=a.features, k=a.k, steps=a.steps,
                                         out=dict_path, force=True, progress=progress, model=model)
        finally:
            dictionary.held_out_metrics = original

        # 6 (fit side). best cell: the fit recording's cached analysis; best dictionary feature
        log("choosing the best cell and dictionary feature per feature on the fit recording ...")
        with timed(times, "analysis_fit"):
            best = analysis.analysis(fit, progress=progress)["best"]
        best = best[best["rank"] == 1].set_index("feature")
        fit_feats = detectors.default_features(fit)

    # 5. encode both into the hidden recording
    log("encoding ...")
    with open_recording(hidden_path) as hid:
        with timed(times, "encode_directions"):
            derived.encode(hid, dirs_path)
        with timed(times, "encode_dictionary"):
            derived.encode(hid, dict_path)

    rows = []
    with open_recording(hidden_path) as hid:
        feats = detectors.default_features(hid)
        names = [n for n in features_mod.FEATURES if n in feats and feats[n].nunique() > 1]
        names += [n for n in feats.columns if n not in names and feats[n].nunique() > 1]
        chosen_on = [n for n in names if n in fit_feats and fit_feats[n].nunique() > 1]
        with timed(times, "dictionary_select"):
            with open_recording(a.fit) as fit:
                dict_pick = choose_dictionary_features(fit, xspec, fit_feats, chosen_on, a.select_rows)
        # 6. scores on the hidden text
        dir_units = [str(n) for n in dspec["unit_names"]]
        with timed(times, "score_hidden"):
            for name in names:
                binary = features_mod.is_binary(name, feats[name].to_numpy())
                metric = "auc" if binary else "r"
                y = feats[name].to_numpy()
                row = {"feature": name, "metric": metric, "goal": GOALS.get(name, (None, None))[1],
                       "positives": int((y != 0).sum()) if binary else None}
                if name in best.index:
                    b = best.loc[name]
                    x = hid.unit(int(b.layer), str(b.stream), int(b.unit))
                    s = score(x, y, binary)
                    row["cell"] = {"layer": int(b.layer), "stream": str(b.stream), "unit": int(b.unit),
                                   "fit_score": float(b.score), "score": s, "strength": strength(s, metric),
                                   "flipped": flipped(float(b.score), s, metric)}
                if name in dir_units:
                    u = dir_units.index(name)
                    x = hid.unit(int(dspec["layer"]), str(dspec["stream"]), u)
                    s = score(x, y, binary)
                    m = dspec["metrics"][name]
                    row["direction"] = {"layer": int(dspec["layer"]), "stream": str(dspec["stream"]), "unit": u,
                                        "fit_score": float(m["score"]), "lambda": float(m["lambda"]),
                                        "score": s, "strength": strength(s, metric),
                                        "flipped": flipped(float(m["score"]), s, metric)}
                if name in dict_pick:
                    d = dict_pick[name]
                    x = hid.unit(int(xspec["layer"]), str(xspec["stream"]), d["unit"])
                    s = score(x, y, binary)
                    row["dictionary"] = {**d, "layer": int(xspec["layer"]), "stream": str(xspec["stream"]),
                                         "score": s, "strength": strength(s, metric),
                                         "flipped": flipped(d["fit_score"], s, metric)}
                rows.append(row)

        # 7. dictionary quality on the hidden text
        log("dictionary quality on the hidden text ...")
        with torch_threads(QUALITY_THREADS), timed(times, "quality_hidden"):
            quality = dictionary.quality(xspec, hid, model=model, whole=True)  # text it never saw: all of it

        # 8. directional ablation on the hidden text
        ablated = [n for n in ABLATED if n in dir_units]
        log(f"ablating {', '.join(ablated)} ...")
        with timed(times, "ablate"):
            abl = directions.ablate(model, docs, dspec, ablated, random=a.random, chars=a.ablate_chars,
                                    progress=progress)
        with timed(times, "ablate_h"):
            abl_h = directions.ablate(model, docs, dspec, ablated, random=a.random, chars=a.ablate_chars,
                                      streams=("h",), progress=progress)

        result = {
            "kind": KIND, "version": VERSION,
            "settings": {k: v for k, v in vars(a).items()},
            "fit": fit_info,
            "hidden": {"folder": str(folder), "name": f"{folder.name}/ (**/*.py)", "characters": len(hid),
                       "documents": len(docs), "compression": hid.compression, "dtype": hid.dtype,
                       "unknown_chars": hid.unknown_chars, "bytes": hidden_path.stat().st_size},
            "directions": {"features": dir_units, "inputs": dspec["inputs"], "rows": dspec["config"]["rows"],
                           "held_out": {n: dspec["metrics"][n]["score"] for n in dir_units},
                           "best_cell_held_out": {n: dspec["metrics"][n]["best_cell"] for n in dir_units}},
            "dictionary": {"features": a.features, "k": a.k, "steps": a.steps,
                           "batch": int(xspec["config"]["batch"]), "fit_metrics": xspec["metrics"]},
            "features": rows,
            "quality_hidden": quality,
            "ablation": {"c_and_h": abl.to_dict("records"), "h": abl_h.to_dict("records")},
        }
        # 10. pictures
        if a.img:
            img = Path(a.img)
            img.mkdir(parents=True, exist_ok=True)
            if not browser.available():
                log(f"no pictures: {browser.CHROMIUM} not found")
            else:
                with timed(times, "pictures"):
                    for feature in PICTURED:
                        png = picture(hid, feats, result, feature, img / f"direction-{feature}.png")
                        if png is not None:
                            log(f"wrote {png}")
                            result.setdefault("pictures", []).append(str(png))

    # 9. rates, ratios, memory
    rec_chars = result["hidden"]["characters"]
    dict_stream = (int(a.layer), str(a.stream))
    dict_train_s = times["dictionary_train"] - times.get("dictionary_train_quality", 0.0)
    fit_rows = int(dspec["config"]["rows"]["train"]) + int(dspec["config"]["rows"]["held_out"])
    train_rows = a.steps * int(xspec["config"]["batch"])
    read_dict = read.get(dict_stream)
    if read_dict is None:  # the dictionary reads a stream other than c or h: time it too
        with open_recording(a.fit) as fit:
            read_dict = min(read_baseline(fit, [list(dict_stream)])[dict_stream] for _ in range(2))
    per_m = 1e6 / T
    encode_s = times["encode_directions"] + times["encode_dictionary"]
    result["times"] = times
    result["baselines"] = {
        "record_hidden_chars_per_s": rec_chars / times["record_hidden"],
        "read_fit_inputs_s": times["read_fit_inputs"], "read_fit_inputs_runs_s": read_runs,
        "read_fit_inputs": [f"{k}/{s}" for k, s in inputs],
        "read_s_per_million_rows_all_inputs": times["read_fit_inputs"] * per_m,
        "read_s_per_million_rows_dictionary_stream": read_dict * per_m,
    }
    result["ratios"] = {
        "encode_over_record": encode_s / times["record_hidden"],
        "encode_directions_over_record": times["encode_directions"] / times["record_hidden"],
        "encode_dictionary_over_record": times["encode_dictionary"] / times["record_hidden"],
        "directions_fit_over_read_all": times["directions_fit"] / times["read_fit_inputs"],
        "directions_fit_rows": fit_rows,
        "directions_fit_s_per_million_rows": times["directions_fit"] / fit_rows * 1e6,
        "directions_fit_per_row_over_read_per_row": (times["directions_fit"] / fit_rows)
        / (times["read_fit_inputs"] / T),
        "dictionary_train_s_without_quality": dict_train_s,
        "dictionary_train_rows": train_rows,
        "dictionary_train_rows_per_s": train_rows / dict_train_s,
        "dictionary_train_s_per_million_rows": dict_train_s / train_rows * 1e6,
        "dictionary_train_per_row_over_read_per_row": (dict_train_s / train_rows) / (read_dict / T),
    }
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = plain(result)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(report(result))
    return 0


def report(r: dict) -> str:
    """The human-readable report of a run."""
    t, b, q = r["times"], r["baselines"], r["ratios"]
    s = r["settings"]
    lines = [f"fit: {r['fit']['name']} ({r['fit']['characters']:,} characters, {r['fit']['compression']}, "
             f"{r['fit']['dtype']}); hidden: {r['hidden']['characters']:,} characters of {r['hidden']['folder']} "
             f"({r['hidden']['documents']} files, {r['hidden']['unknown_chars']:,} outside the vocabulary)",
             "",
             "step                                   seconds  rate / ratio",
             f"record the hidden text (baseline)     {t['record_hidden']:8.2f}  "
             f"{b['record_hidden_chars_per_s']:,.0f} chars/s (torch threads {s['threads']})",
             f"read fit c,h once (baseline)          {t['read_fit_inputs']:8.2f}  "
             f"{b['read_s_per_million_rows_all_inputs']:.2f} s per million rows of {' '.join(b['read_fit_inputs'])}"
             f" (runs {' '.join(f'{v:.2f}' for v in b['read_fit_inputs_runs_s'])} s)",
             f"directions.fit (sample {s['sample']:,})        {t['directions_fit']:8.2f}  "
             f"{q['directions_fit_over_read_all']:.2f} × reading all of c,h; {q['directions_fit_rows']:,} rows read, "
             f"{q['directions_fit_s_per_million_rows']:.2f} s per million = "
             f"{q['directions_fit_per_row_over_read_per_row']:.2f} × the read per row",
             f"dictionary.train ({s['steps']} steps)         {t['dictionary_train']:8.2f}  "
             f"of which its held-out quality {t.get('dictionary_train_quality', 0):.2f} s; training "
             f"{q['dictionary_train_rows']:,} rows: {q['dictionary_train_rows_per_s']:,.0f} rows/s, "
             f"{q['dictionary_train_s_per_million_rows']:.2f} s per million = "
             f"{q['dictionary_train_per_row_over_read_per_row']:.2f} × reading layer {s['layer']} {s['stream']} "
             f"({b['read_s_per_million_rows_dictionary_stream']:.2f} s per million)",
             f"encode directions                     {t['encode_directions']:8.2f}  "
             f"{q['encode_directions_over_record']:.3f} × the recording",
             f"encode dictionary                     {t['encode_dictionary']:8.2f}  "
             f"{q['encode_dictionary_over_record']:.3f} × the recording",
             f"encode both / record                  {'':8}  {q['encode_over_record']:.3f} "
             f"(goal <= {ENCODE_GOAL}: {'met' if q['encode_over_record'] <= ENCODE_GOAL else 'NOT met'})",
             f"fit analysis (cached after the first) {t['analysis_fit']:8.2f}",
             f"choose dictionary features            {t['dictionary_select']:8.2f}  "
             f"on {next((x['dictionary']['fit_rows'] for x in r['features'] if x.get('dictionary')), 0):,} fit rows",
             f"score on the hidden text              {t['score_hidden']:8.2f}",
             f"dictionary quality, hidden text       {t['quality_hidden']:8.2f}",
             f"ablate (c and h) / (h only)           {t['ablate']:8.2f} / {t['ablate_h']:.2f}  "
             f"{s['ablate_chars']:,} chars, {s['random']} random directions"]
    if "pictures" in t:
        lines.append(f"pictures                              {t['pictures']:8.2f}")
    lines.append(f"peak RSS                              {r['peak_rss_mb']:8,.0f} MB")
    lines += ["", markdown_table(r), "", table_note(r), ""]
    qh = r["quality_hidden"]
    lines.append(f"dictionary quality on the hidden text ({qh.get('rows', 0):,} held-out rows, "
                 f"{qh.get('chars', 0):,} characters for the loss):")
    lines.append("| measure | hidden text | on the fit recording (held out) | goal | met? |")
    lines.append("|---|---|---|---|---|")
    fm = r["dictionary"]["fit_metrics"]
    for key, goal in QUALITY_GOALS.items():
        v, f = qh.get(key), fm.get(key)
        vs = "–" if v is None else f"{v:.3f}"
        fs = "–" if f is None else f"{f:.3f}"
        if goal is None:
            lines.append(f"| {key} | {vs} | {fs} | – | – |")
            continue
        op, g = goal
        ok = v is not None and (v >= g if op == ">=" else v <= g)
        lines.append(f"| {key} | {vs} | {fs} | {op.replace('>=', '≥').replace('<=', '≤')} {g} | "
                     f"{'yes' if ok else '**no**'} |")
    if "bits_clean" in qh:
        lines.append(f"bits per character: clean {qh['bits_clean']:.3f}, reconstructed "
                     f"{qh['bits_reconstructed']:.3f}, zeroed {qh['bits_zero']:.3f}")
    import pandas as pd
    for key, what in (("c_and_h", "every block the read-out reads (c and h)"), ("h", "h blocks only")):
        df = pd.DataFrame(r["ablation"][key], columns=directions.EFFECT_COLUMNS)
        for col in directions.EFFECT_COLUMNS[2:]:  # null (NaN in the JSON) back to NaN
            df[col] = pd.to_numeric(df[col], errors="coerce")
        df["positions"] = df["positions"].fillna(0).astype(int)
        lines += ["", f"directional ablation on the hidden text, {what}:", directions.report(df)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
