"""Choose the HDF5 chunk shape for [T, units] streams: measure both access patterns.

    python bench/chunks.py recordings/stdlib-test.h5 [--layer 1 --stream c]

Copies one real stream into datasets with several chunk shapes (gzip+shuffle, as probe
writes them, and uncompressed), then times reading one unit over all T ("column") and a
5,000-step window of all units ("window"), each from a freshly opened file, median of 5.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from probe import open_recording


def timed(path: Path, name: str, read) -> float:
    runs = []
    for _ in range(5):
        with h5py.File(path, "r", rdcc_nbytes=64 << 20) as f:
            t0 = time.perf_counter()
            read(f[name])
            runs.append(time.perf_counter() - t0)
    return statistics.median(runs) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recording")
    p.add_argument("--layer", type=int, default=1)
    p.add_argument("--stream", default="c")
    a = p.parse_args()
    with open_recording(a.recording) as rec:
        data = rec.stream(a.layer, a.stream)[:]  # [T, units] float16
    T, U = data.shape
    mid = T // 2
    print(f"{a.recording}: layer {a.layer} stream {a.stream}, T={T:,} x {U} units, float16")
    print(f"{'chunks':>14} {'compression':>12} {'MB':>7} {'column ms':>10} {'window ms':>10}")
    with tempfile.TemporaryDirectory(dir=Path(a.recording).parent) as tmp:
        for chunks in [(256, U), (1024, U), (4096, 64), (4096, 32), (8192, 32), (16384, 16), (4096, 8)]:
            chunks = (min(chunks[0], T), min(chunks[1], U))
            for comp in ("gzip", None):
                path = Path(tmp) / f"c{chunks[0]}x{chunks[1]}{comp}.h5"
                with h5py.File(path, "w") as f:
                    f.create_dataset("x", data=data, chunks=chunks, compression=comp,
                                     shuffle=comp is not None)
                col = timed(path, "x", lambda d: d[:, 7])
                win = timed(path, "x", lambda d: d[mid:mid + 5000])
                print(f"{str(chunks):>14} {comp or 'none':>12} {path.stat().st_size / 1e6:7.1f} "
                      f"{col:10.1f} {win:10.1f}")
                path.unlink()
    np.testing.assert_equal(data.shape, (T, U))


if __name__ == "__main__":
    main()
