"""The K best values of each unit over a stream read in chunks, reading few rows.

``summaries.update`` keeps, per unit, the K highest and K lowest values with their
positions. A chunk is first reduced per block of rows (max, min: ``blocks``); only the
blocks whose max can still enter the top K are read again (``candidates``), their K best
chosen by (value desc, row asc) (``best``) and merged with the running lists (``merge``).
The order is total, so the K best of a union are the K best of the parts' K best: the
result does not depend on where the rows were cut. (``probe._kernels.topk`` does the same
in C; this is its numpy twin.)
"""
from __future__ import annotations

import numpy as np

K = 128              # top-k and bottom-k per unit (the card shows 10, 40 positions apart)


def best(g: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of g [n, U] (float32, -inf: not a value), the rows that can enter a top-K
    whose K-th value is ``bound`` [U]: the chunk's K best by (value desc, row asc) among
    those > bound. (values [U, K], rows [U, K]), padded with -inf and row -1."""
    n, U = g.shape
    vals = np.full((U, K), -np.inf, np.float32)
    rows = np.full((U, K), -1, np.int64)
    mask = g > bound[None, :]
    many = mask.sum(axis=0) > K

    def place(cols, take):
        c, r = np.nonzero(take.T)  # sorted by column, then row
        if not len(c):
            return
        first = np.searchsorted(c, c, side="left")
        slot = np.arange(len(c)) - first
        keep = slot < K
        vals[cols[c[keep]], slot[keep]] = g[r[keep], cols[c[keep]]]
        rows[cols[c[keep]], slot[keep]] = r[keep]

    few = np.flatnonzero(~many)
    if len(few):
        place(few, mask[:, few])
    big = np.flatnonzero(many)
    if len(big):  # more than K candidates (n > K): the K best of the chunk, ties by row
        sub = g[:, big]
        kth = np.partition(sub, n - K, axis=0)[n - K]
        gt, eq = sub > kth, sub == kth
        room = K - gt.sum(axis=0)
        place(big, gt | (eq & (np.cumsum(eq, axis=0) <= room)))
    return vals, rows


def merge(av, ap, bv, bp) -> tuple[np.ndarray, np.ndarray]:
    """The K best of two candidate lists [U, K] by (value desc, position asc), b's positions
    all after a's: a stable sort of a then b by value keeps the position order of ties."""
    v = np.concatenate([av, bv], axis=1)
    p = np.concatenate([ap, bp], axis=1)
    order = np.argsort(-v, axis=1, kind="stable")[:, :K]
    return np.take_along_axis(v, order, 1), np.take_along_axis(p, order, 1)


def blocks(x: np.ndarray, row: int, bk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per block of ``bk`` rows on the recording's grid (blocks cut by the chunk's ends
    are partial): (first local row of each block [m + 1, the last is n], max, min [m, U]
    float32, float64 sums [m, U]). NaN propagates into max, min and sums."""
    import torch
    n = len(x)
    head = min(-row % bk, n)
    mid = (n - head) // bk
    cuts = np.r_[0, head + bk * np.arange(mid + 1)] if head else head + bk * np.arange(mid + 1)
    if cuts[-1] < n:
        cuts = np.r_[cuts, n]
    mx, mn, sm = [], [], []
    for a, b, full in ((0, head, False), (head, head + bk * mid, True), (head + bk * mid, n, False)):
        if b <= a:
            continue
        if full:
            v = x[a:b].reshape(-1, bk, x.shape[1])
            t = torch.from_numpy(v)
            mx.append(t.amax(1).numpy())
            mn.append(t.amin(1).numpy())
            sm.append(v.sum(axis=1, dtype=np.float64))
        else:
            mx.append(x[a:b].max(axis=0, keepdims=True))
            mn.append(x[a:b].min(axis=0, keepdims=True))
            sm.append(x[a:b].sum(axis=0, dtype=np.float64, keepdims=True))
    return cuts, np.concatenate(mx), np.concatenate(mn), np.concatenate(sm)


def candidates(x: np.ndarray, sign: int, cuts: np.ndarray, bm: np.ndarray, bound: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The chunk's K best (value desc, row asc) of ``sign`` * x [n, U] (any float dtype)
    among those above
    ``bound`` [U], as ``best``, reading only the blocks that can hold one: ``bm`` [m, U] is
    each block's max of sign * x. A block is read if its max is not finite (NaN or inf may
    hide its finite values) or if it is >= bc, the K-th largest finite block max, and above
    ``bound``: K blocks hold K distinct values >= bc, so a value below bc has K better ones
    (and of the blocks whose max is bc, the first K hold K values = bc before any later)."""
    m, U_all = bm.shape
    vals_all = np.full((U_all, K), -np.inf, np.float32)
    rows_all = np.full((U_all, K), -1, np.int64)
    # only the units with a block that can enter (few, once the top-k has filled) go on
    clean = np.isfinite(bm)
    act = np.flatnonzero((bm > bound).any(axis=0) if clean.all() else (~clean | (bm > bound)).any(axis=0))
    if not len(act):
        return vals_all, rows_all
    bm, bound, clean = bm[:, act], bound[act], clean[:, act]
    U = len(act)
    bc = np.full(U, -np.inf, np.float32)
    if m >= K:
        sub = np.where(clean, bm, -np.inf).T.copy()  # [units, m]: rows contiguous
        bc = np.partition(sub, m - K, axis=1)[:, m - K]
    # blocks whose max ties bc each hold a value = bc: the first K of them hold the first K
    eq = clean & (bm == bc) & (bm > bound)
    sel = ~clean | ((bm > bc) & (bm > bound)) | (eq & (np.cumsum(eq, axis=0) <= K))
    u, blk = np.nonzero(sel.T)  # by unit, then block: rows ascend within a unit
    vals = np.full((U, K), -np.inf, np.float32)
    rows = np.full((U, K), -1, np.int64)
    if not len(u):
        return vals_all, rows_all
    lo, ln = cuts[blk], np.diff(cuts)[blk]
    ends = np.cumsum(ln)
    r = np.repeat(lo - ends + ln, ln) + np.arange(ends[-1])
    uu = np.repeat(u, ln)
    g = x[r, act[uu]].astype(np.float32)
    if sign != 1:
        g = -g
    keep = np.isfinite(g) & (g >= bc[uu]) & (g > bound[uu])
    r, uu, g = r[keep], uu[keep], g[keep]
    if not len(r):
        return vals_all, rows_all
    eq = g == bc[uu]  # ties at bc (a saturated gate): only the first K of a unit can enter
    if eq.sum() > K:
        before = np.cumsum(eq) - eq
        starts = np.flatnonzero(np.r_[True, uu[1:] != uu[:-1]])
        rank = before - np.repeat(before[starts], np.diff(np.r_[starts, len(uu)]))
        keep = ~eq | (rank < K)
        r, uu, g = r[keep], uu[keep], g[keep]
    counts = np.bincount(uu, minlength=U)
    first = np.cumsum(counts) - counts
    slot = np.arange(len(uu)) - first[uu]
    width = max(int(counts.max()), 1)
    V = np.full((width, U), -np.inf, np.float32)  # padded: column u holds unit u's candidates
    R = np.full((width, U), -1, np.int64)
    V[slot, uu], R[slot, uu] = g, r
    v, i = best(V, bound)
    ok = i >= 0
    rows[ok] = R[i[ok], np.nonzero(ok)[0]]
    vals[ok] = v[ok]
    vals_all[act], rows_all[act] = vals, rows
    return vals_all, rows_all
