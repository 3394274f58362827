"""Derived streams: read-outs of recorded streams, stored in the recording as streams.

A *derived stream* is a function of some recorded streams at the same position — a probe
direction per known feature (``probe.readout.directions``), or the features of a sparse
dictionary (``probe.readout.dictionary``). Both are saved as a *spec*: one ``torch.save`` dict of
plain values and tensors (loadable with ``weights_only=True``)::

    format       "probe-derived"
    version      1
    kind         "directions" | "dictionary": the module whose ``transform`` applies it
    stream       the derived stream's name ("dir", "dict", …)
    layer        the layer it is stored with: the highest layer it reads (all it reads has
                 been computed once that layer has read position t: a character, or
                 a word-level model's token)
    inputs       [[layer, stream], …]: what it reads, concatenated in this order; a stream
                 whose values are unbounded (``c``) is read through tanh first
    widths       (optional; specs made before it lack it) [units, …] of each input as fitted:
                 streams can differ in width (h narrower than c under an LSTM's projection)
    unit_names   one name per derived unit (feature names; f0 … fN for a dictionary)
    model_sha256 the checkpoint of the recordings it was fitted on ('' if unknown)
    fitted_on    {"path", "length", "created"} of that recording
    mean, scale  float32 tensors [D]: inputs are standardised as (x - mean) / scale
    params       the kind's own tensors (weights…)
    metrics      what its maker measured (held-out scores, explained variance…)
    config       how it was made (arguments, seed…)

``read_inputs`` gives the input rows of a recording (``standardise`` standardises them);
``transform`` applies a spec to them (each kind's computation is in
``probe.recording.transforms``); ``probe encode`` (``encode``) writes the result into the
recording.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from probe.errors import ProbeError
from probe.recording import h5format, transforms

FORMAT = "probe-derived"
VERSION = 1
KINDS = tuple(transforms.TRANSFORMS)  # "directions", "dictionary": what each computes is in transforms
KEYS = ("format", "version", "kind", "stream", "layer", "inputs", "unit_names", "model_sha256",
        "fitted_on", "mean", "scale", "params", "metrics", "config")


def save(spec: dict, path: str | os.PathLike) -> Path:
    """Write a spec (checked first), atomically: a failed write leaves no file."""
    from probe.files import atomic
    check(spec, path)
    path = Path(path)
    with atomic(path) as tmp:
        torch.save(spec, tmp)
    return path


def load(path: str | os.PathLike) -> dict:
    """Read and check a spec file: one-line errors for a missing, foreign or broken file."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path}: no such file")
    try:
        spec = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: one line
        raise ProbeError(f"{path}: not a probe directions/dictionary file ({type(e).__name__})") from None
    check(spec, path)
    return spec


def check(spec, where: object) -> None:
    """The spec's shape, as the module docstring says; a one-line error naming ``where``."""
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ProbeError(f"{where}: not a probe directions/dictionary file")
    if spec.get("version") != VERSION:
        raise ProbeError(f"{where}: version {spec.get('version')!r} of {FORMAT}; this probe reads {VERSION}")
    missing = [k for k in KEYS if k not in spec]
    if missing:
        raise ProbeError(f"{where}: lacks {', '.join(missing)}")
    if spec["kind"] not in KINDS:
        raise ProbeError(f"{where}: unknown kind {spec['kind']!r} (kinds: {', '.join(KINDS)})")
    if not len(spec["inputs"]):
        raise ProbeError(f"{where}: reads no streams")
    mean, scale = spec["mean"], spec["scale"]
    if mean.ndim != 1 or mean.shape != scale.shape:
        raise ProbeError(f"{where}: mean and scale must be vectors of one length")
    if not spec["unit_names"]:
        raise ProbeError(f"{where}: no units")
    widths = spec.get("widths")
    if widths is not None and (len(widths) != len(spec["inputs"]) or sum(int(w) for w in widths) != len(mean)):
        raise ProbeError(f"{where}: widths {list(widths)} do not fit its {len(spec['inputs'])} inputs of "
                         f"{len(mean)} values")


def width(rec, inputs) -> list[int]:
    """Units of each input stream of ``rec`` (checked to exist): each (layer, stream) its own."""
    return [rec.width(int(layer), str(stream)) for layer, stream in inputs]


def check_widths(spec: dict, widths: list[int], where: object) -> None:
    """A one-line error naming ``where`` unless input streams of these ``widths`` fit the spec:
    as many values per position as it was fitted on, and each input as wide as it was
    (``widths`` in the spec; older specs only say the total)."""
    names = " ".join(f"{k}/{s}" for k, s in spec["inputs"])
    if sum(widths) != len(spec["mean"]):
        raise ProbeError(f"{where}: the spec reads {len(spec['mean'])} values per position; {names} have "
                         f"{sum(widths)}")
    fitted = [int(w) for w in spec.get("widths") or widths]
    if fitted != list(widths):
        raise ProbeError(f"{where}: the spec was fitted on {names} of widths {fitted}; here they are {list(widths)}")


def read_inputs(rec, inputs, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the input streams, concatenated as float32 [n, D]; unbounded
    streams (``c``) through tanh, as the spec's docstring says. Not standardised."""
    parts = []
    for layer, stream in inputs:
        x = np.asarray(rec.stream(int(layer), str(stream))[start:stop], dtype=np.float32)
        if not h5format.is_bounded(str(stream)):
            np.tanh(x, out=x)
        parts.append(x)
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


standardise = transforms.standardise  # (x - mean) / scale: the read-outs' first step


def transform(spec: dict, x: np.ndarray) -> np.ndarray:
    """The derived units of input rows x [n, D] (as ``read_inputs`` gives them): float32
    [n, units], computed as the spec's kind says (``probe.recording.transforms``)."""
    check(spec, "spec")
    return transforms.TRANSFORMS[spec["kind"]](spec, x)


# ---- encode: the derived stream written into the recording ---------------------------------

CHUNK = 32768  # rows read, transformed and written at a time


def encode(rec, spec_path: str | os.PathLike, *, force: bool = False, progress: bool = False,
           chunk: int = CHUNK) -> list[tuple[Path, int, str]]:
    """Add the derived stream of the spec at ``spec_path`` to the open recording ``rec`` (a
    folder of shards: to each shard): dataset ``layers/{layer}/{stream}``, chunked and
    compressed as the recording's streams, float16 (float32 if the recording is), with
    attributes ``derived`` (JSON: kind, spec_name, spec_sha256, inputs, unit_names, …) and
    ``unit_names``. Returns (file, layer, stream) of each file written; ``rec`` reads the
    new stream afterwards.

    Checked first, one line each: a spec made from another model's recording (sha256;
    ``force`` applies it anyway), inputs the recording lacks or of another width, a name
    taken by a recorded stream, a derived stream of that name already there (``force``
    replaces it). Written under a hidden name (``.stream.partial``) and renamed when
    complete, so an interrupted encode leaves no stream that looks whole; it is removed on
    the next run. (HDF5 does not give back a replaced dataset's space: ``h5repack`` does.)
    """
    from probe.lm.model import file_sha256
    spec_path = Path(spec_path)
    spec = load(spec_path)
    sha = file_sha256(spec_path)
    _check_fits(spec, rec, spec_path, force)
    out = [_encode_one(part, spec, spec_path, sha, force, progress, chunk) for part in getattr(rec, "parts", [rec])]
    rec.refresh()
    return out


def _check_fits(spec: dict, rec, spec_path: Path, force: bool) -> None:
    layer, name = int(spec["layer"]), str(spec["stream"])
    theirs, ours = spec["model_sha256"], rec.model_sha256
    if theirs and ours and theirs != ours and not force:
        raise ProbeError(f"{spec_path}: was fitted on recordings of another model (sha256 {theirs[:12]}…, "
                         f"{rec.path.name} has {ours[:12]}…); pass --force to apply it anyway")
    try:
        widths = width(rec, spec["inputs"])
    except ProbeError as e:
        raise ProbeError(f"{spec_path}: reads a stream {rec.path.name} lacks ({e})") from None
    check_widths(spec, widths, f"{spec_path} on {rec.path.name}")
    check_target(rec, layer, name, force)


def check_target(rec, layer: int, name: str, replace: bool) -> None:
    """Where a derived stream ``name`` goes in ``rec``: a recorded layer, a plain name no
    recorded stream has, and no derived stream of that name unless ``replace``."""
    if layer not in rec.layer_ids:
        raise ProbeError(f"{rec.path}: no layer {layer} to store {name} with")
    if name in rec.streams or not name.isidentifier():
        raise ProbeError(f"{rec.path}: stream name {name!r} is taken by a recorded stream or not a plain name")
    if (layer, name) in rec.derived and not replace:
        raise ProbeError(f"{rec.path}: already has derived stream {layer}/{name} (from "
                         f"{rec.derived[(layer, name)].get('spec_name')}); pass --force to replace it")


def _encode_one(part, spec: dict, spec_path: Path, sha: str, force: bool, progress: bool,
                chunk: int) -> tuple[Path, int, str]:
    """The stream into one file, ``part`` (``encode`` checked the spec against the whole recording)."""
    layer, name = int(spec["layer"]), str(spec["stream"])
    info = {"kind": spec["kind"], "spec_name": spec_path.name, "spec_sha256": sha,
            "inputs": [[int(k), str(s)] for k, s in spec["inputs"]],
            "model_sha256": spec["model_sha256"], "fitted_on": spec["fitted_on"]}

    def rows(rec, a: int, b: int) -> np.ndarray:
        return transform(spec, read_inputs(rec, spec["inputs"], a, b))
    write_stream(part, layer, name, [str(n) for n in spec["unit_names"]], rows, info, replace=force,
                 progress=progress, chunk=chunk, desc=f"encoding {part.path.name}")
    return part.path, layer, name


def write_stream(rec, layer: int, name: str, unit_names: list[str], rows, info: dict, *,
                 replace: bool = False, progress: bool = False, chunk: int = CHUNK,
                 desc: str = "writing") -> None:
    """Write a derived stream ``layers/{layer}/{name}`` into the open one-file recording
    ``rec`` (``Recording.writable`` opens it for writing meanwhile): ``rows(rec, a, b)`` gives
    its values [b - a, units] for rows [a, b), read in ``chunk``s; ``info`` goes into its
    ``derived`` attribute with ``stream``, ``unit_names`` and ``created``. Under a hidden
    name until complete (then renamed; an interrupted write leaves no stream); an existing
    derived stream of that name is refused unless ``replace``; a recorded one always."""
    import json
    from datetime import datetime, timezone

    from tqdm.auto import tqdm

    from probe.files import interrupts
    final, partial = h5format.path(layer, name), h5format.path(layer, f".{name}.partial")
    check_target(rec, layer, name, replace)
    with rec.writable() as f:
        try:
            T = len(rec)
            if partial in f:
                del f[partial]  # left by an interrupted write
            dtype = "float32" if rec.dtype == "float32" else "float16"
            ds = h5format.create_stream(f, layer, f".{name}.partial", T, len(unit_names), dtype, rec.compression,
                                        checksums=rec.checksums == "fletcher32")
            with interrupts() as stop, tqdm(total=T, unit="char", unit_scale=True, disable=not progress,
                                            desc=desc) as bar:
                for a in range(0, T, chunk):
                    if stop.is_set():
                        raise KeyboardInterrupt
                    b = min(a + chunk, T)
                    ds[a:b] = np.asarray(rows(rec, a, b)).astype(dtype)
                    bar.update(b - a)
            ds.attrs["derived"] = json.dumps({**info, "stream": name, "unit_names": list(unit_names),
                                              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            ds.attrs["unit_names"] = list(unit_names)
            if final in f:
                del f[final]
            f.move(partial, final)
            f.flush()
        except BaseException:
            try:
                if partial in f:
                    del f[partial]
            except Exception:  # noqa: BLE001 - the file is in trouble already; the error says why
                pass
            raise


# ---- describing a spec ----------------------------------------------------------------------

def is_spec(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directions/dictionary file (not a model checkpoint)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not ours: the caller tries the other kinds
        return False
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def _plain(v):
    if isinstance(v, torch.Tensor):
        return v.tolist() if v.numel() == 1 else f"tensor {list(v.shape)}"
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def summary(path: str | os.PathLike) -> dict:
    """What ``probe info X.pt`` prints for a spec: what it reads and writes, and its metrics
    (a dictionary's quality keys at the top: explained_variance, l0, dead_fraction,
    loss_recovered)."""
    from probe.lm.model import file_sha256
    spec = load(path)
    names = [str(n) for n in spec["unit_names"]]
    metrics = _plain(spec["metrics"])
    out = {"path": str(path), "sha256": file_sha256(path), "format": f"{FORMAT} v{spec['version']}",
           "kind": spec["kind"], "stream": spec["stream"], "layer": int(spec["layer"]),
           "inputs": " ".join(f"{k}/{s}" for k, s in spec["inputs"]), "units": len(names),
           "unit_names": " ".join(names) if len(names) <= 32 else " ".join(names[:8]) + f" … ({len(names)})",
           "model_sha256": spec["model_sha256"], "fitted_on": _plain(spec["fitted_on"])}
    if spec["kind"] == "dictionary" and isinstance(metrics, dict):
        out.update({k: v for k, v in metrics.items() if not isinstance(v, dict)})
    out["metrics"] = metrics
    out["config"] = _plain(spec["config"])
    return out


def report(spec: dict) -> str:
    """A few lines on a fitted spec: per feature its held-out score beside the best single
    cell's (directions), or the dictionary's quality."""
    metrics = spec["metrics"]
    if spec["kind"] == "directions":
        lines = [f"{'feature':<18} {'metric':<6} {'direction':>9} {'best cell':>9}  cell"]
        for name, m in metrics.items():
            if not isinstance(m, dict):
                continue
            cell = m.get("best_cell") or {}
            where = f"{cell.get('layer')}:{cell.get('stream')}:{cell.get('unit')}" if cell else ""
            lines.append(f"{name:<18} {m.get('metric', ''):<6} {m.get('score', float('nan')):>9.3f} "
                         f"{cell.get('score', float('nan')):>9.3f}  {where}")
        return "\n".join(lines)
    keys = ("explained_variance", "l0", "dead_fraction", "loss_recovered")
    return "  ".join(f"{k} {metrics[k]:.3f}" for k in keys if isinstance(metrics.get(k), (int, float)))
