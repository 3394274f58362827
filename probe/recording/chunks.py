"""Writing a recording's streams: whole chunks compressed in worker threads, stored directly.

``ChunkWriter`` takes rows in time order and stores each full HDF5 chunk with
``write_direct_chunk``, compressed as the dataset's filters would (``encode_chunk``: byte
shuffle, Zstandard or deflate, Fletcher-32), in worker threads (zstd and zlib release the
GIL). ``Int8Spill`` holds an int8 recording's values until every unit's codebook can be made.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zstandard
from tqdm.auto import tqdm

from probe.recording import h5format

COMPRESSION_LEVEL = 1  # zstd and gzip level: the fastest (docs/recording-format.md, "Compression")


def shuffle(raw: np.ndarray) -> bytes:
    """HDF5's byte shuffle of a chunk: every value's first bytes, then every second byte…
    (for 2-byte values, the low bytes then the high bytes)."""
    if raw.itemsize == 2:
        u = raw.view(np.uint16).reshape(-1)
        out = np.empty(2 * u.size, np.uint8)
        np.copyto(out[:u.size], u, casting="unsafe")  # low bytes (little-endian)
        np.right_shift(u, 8, out=out[u.size:], casting="unsafe")
        return out.tobytes()
    return raw.view(np.uint8).reshape(-1, raw.itemsize).T.tobytes()


_local = threading.local()  # one Zstandard compressor per worker thread (they are not shared)


def encode_chunk(a: np.ndarray, shape: tuple[int, int], codec: str, level: int, checksum: bool) -> bytes:
    """One HDF5 chunk as the filters would store it (padded to ``shape``): byte shuffle, then
    Zstandard (a frame with its content size, as the HDF5 filter reads it) or deflate at
    ``level``, or the raw bytes for "none"; then the Fletcher-32 checksum."""
    if a.shape != shape:
        a = np.pad(a, ((0, shape[0] - a.shape[0]), (0, shape[1] - a.shape[1])))
    raw = np.ascontiguousarray(a)
    if codec == "none":
        body = raw.tobytes()
    else:
        shuffled = shuffle(raw)
        if codec == "gzip":
            body = zlib.compress(shuffled, level)
        else:
            z = getattr(_local, "zstd", None)
            if z is None or _local.level != level:
                z = _local.zstd = zstandard.ZstdCompressor(level=level)
                _local.level = level
            body = z.compress(shuffled)
    return body + h5format.fletcher32(body).to_bytes(4, "little") if checksum else body


class ChunkWriter:
    """Append rows to [T, units] datasets in time order; whole chunks are compressed in
    worker threads (zstd and zlib release the GIL) and stored with ``write_direct_chunk``."""

    def __init__(self, dsets: dict, dtype: str, codec: str = "zstd", level: int = COMPRESSION_LEVEL,
                 workers: int = 2, checksum: bool = True):
        self.dsets, self.dtype, self.codec, self.level = dsets, np.dtype(dtype), codec, level
        self.checksum = checksum
        first = next(iter(dsets.values()))
        self.rows, self.cols = first.chunks
        self.units = first.shape[1]
        self.pending: dict = {k: [] for k in dsets}
        self.n_pending = 0
        self.row0 = 0  # first row of the pending buffer
        self.pool = ThreadPoolExecutor(workers)
        self.inflight: list = []

    def append(self, vals: dict) -> None:
        n = None
        for k, v in vals.items():
            self.pending[k].append(v)
            n = len(v)
        self.n_pending += n
        while self.n_pending >= self.rows:
            self._flush(self.rows)

    def _flush(self, n: int) -> None:
        for k in self.dsets:
            block = np.concatenate(self.pending[k]) if len(self.pending[k]) > 1 else self.pending[k][0]
            head, rest = block[:n], block[n:]
            self.pending[k] = [rest] if len(rest) else []
            head = head.astype(self.dtype, copy=False)
            for c0 in range(0, self.units, self.cols):
                fut = self.pool.submit(encode_chunk, head[:, c0:c0 + self.cols],
                                       (self.rows, self.cols), self.codec, self.level, self.checksum)
                self.inflight.append((k, (self.row0, c0), fut))
        self.n_pending -= n
        self.row0 += n
        self._drain(limit=8 * len(self.dsets))

    def _drain(self, limit: int = 0) -> None:
        while len(self.inflight) > limit:
            k, offset, fut = self.inflight.pop(0)
            self.dsets[k].id.write_direct_chunk(offset, fut.result())

    def close(self) -> None:
        """Write what is pending (the last chunk row is padded) and wait for the workers."""
        if self.n_pending:
            self._flush(self.n_pending)
        self._drain()
        self.pool.shutdown()

    def abort(self) -> None:
        """Give up without waiting (the file is being discarded)."""
        self.pool.shutdown(wait=False, cancel_futures=True)


class Int8Spill:
    """For ``dtype="int8"``: streams are first spilled as float16 to scratch files beside the
    output, then each unit is coded against its own codebook of 256 values (bins of equal
    count, from a sample of every row-stride of the whole text), which can only be made once
    every value has been seen."""

    SAMPLE = 65536  # rows sampled per stream for the codebooks

    def __init__(self, folder: Path, keys: list, T: int, units: int):
        self.dir = Path(tempfile.mkdtemp(prefix=".probe-int8-", dir=folder))
        self.maps = {key: np.lib.format.open_memmap(self.dir / f"{key[0]}-{key[1]}.npy", "w+", np.float16, (T, units))
                     for key in keys}
        self.row = 0

    def append(self, vals: dict) -> None:
        n = 0
        for key, v in vals.items():
            n = len(v)
            self.maps[key][self.row:self.row + n] = v
        self.row += n

    def write(self, writer: "ChunkWriter", dsets: dict, progress: bool, stop, block: int) -> None:
        """Code every stream into ``writer`` (``block`` rows at a time), and store each
        dataset's codebook."""
        T = self.row
        stride = max(1, T // self.SAMPLE)
        luts = {}
        for key, m in self.maps.items():
            luts[key], dsets[key].attrs["codebook"] = h5format.codebook(m[::stride])
        with tqdm(total=T, unit="char", unit_scale=True, disable=not progress, desc="coding int8") as bar:
            for a in range(0, T, block):
                if stop.is_set():
                    raise KeyboardInterrupt
                writer.append({key: h5format.encode(m[a:a + block], luts[key]) for key, m in self.maps.items()})
                bar.update(min(block, T - a))

    def close(self) -> None:
        self.maps.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
