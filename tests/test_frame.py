"""``Recording.frame``: every column against a plain reference over several documents (a
document that starts after no newline, one that ends without one), the first and last
position and the last unit, wide and tidy."""
from __future__ import annotations

import numpy as np
import pytest

from probe import ProbeError, open_recording
from probe.recording import h5format

DOCS = [("a.py", "ab\ncd"), ("b.py", "ef\n\ng\n"), ("c.py", "h")]  # a.py ends without a newline
TEXT = "".join(t for _, t in DOCS)
T, UNITS = len(TEXT), 3
COLUMNS = ["position", "char", "document", "line", "column", "loss"]


def reference() -> dict[str, list]:
    """Each position's document, and line and column within it, counted character by character."""
    out = {"position": [], "char": [], "document": [], "line": [], "column": []}
    t = 0
    for d, (_, text) in enumerate(DOCS):
        line = column = 0
        for ch in text:
            for key, v in zip(out, (t, ch, d, line, column)):
                out[key].append(v)
            line, column = (line + 1, 0) if ch == "\n" else (line, column + 1)
            t += 1
    return out


@pytest.fixture
def rec(tmp_path):
    values = np.arange(T)[:, None] * 10.0 + np.arange(UNITS)  # value of unit u at t: 10 t + u
    loss = np.arange(T, dtype=np.float32) / 8
    starts = np.cumsum([0] + [len(t) for _, t in DOCS])
    loss[starts[:-1]] = np.nan  # no loss at a document's first character
    documents = [(name, int(a), int(b)) for (name, _), a, b in zip(DOCS, starts[:-1], starts[1:])]
    path = h5format.write(tmp_path / "r.h5", TEXT, {(0, "h"): values}, documents=documents, loss=loss)
    with open_recording(path) as r:
        yield r


def test_the_wide_frame_is_one_row_per_position_and_one_column_per_unit(rec):
    df = rec.frame(0, "h")
    assert list(df.columns) == COLUMNS + ["unit_0", "unit_1", "unit_2"] and len(df) == T
    for key, want in reference().items():
        assert df[key].tolist() == want, key
    np.testing.assert_array_equal(df["loss"], rec.loss)
    for u in range(UNITS):
        assert df[f"unit_{u}"].tolist() == [10.0 * t + u for t in range(T)]
    assert df.iloc[7][["char", "document", "line", "column"]].tolist() == ["\n", 1, 0, 2]
    assert df.iloc[5][["char", "document", "line", "column"]].tolist() == ["e", 1, 0, 0]  # no newline before


def test_the_first_and_last_position_and_the_last_unit(rec):
    first = rec.frame(0, "h", units=[UNITS - 1], start=0, stop=1)
    assert first[COLUMNS[:-1] + ["unit_2"]].values.tolist() == [[0, "a", 0, 0, 0, 2.0]]
    assert np.isnan(first["loss"][0])
    for last in (rec.frame(0, "h", units=UNITS - 1, start=T - 1), rec.frame(0, "h", units=[2], start=-1)):
        assert last[COLUMNS[:-1] + ["unit_2"]].values.tolist() == [[T - 1, "h", 2, 0, 0, 10.0 * (T - 1) + 2]]
        assert np.isnan(last["loss"][0])  # c.py starts at the last position
    with pytest.raises(ProbeError, match=r"no unit 3 \(units are 0..2\)"):
        rec.frame(0, "h", units=[0, UNITS])


def test_the_tidy_frame_is_one_row_per_position_and_unit(rec):
    long = rec.frame(0, "h", units=[2, 0], start=1, stop=T, tidy=True)
    assert list(long.columns) == COLUMNS + ["unit", "value"] and len(long) == 2 * (T - 1)
    assert long["unit"].tolist() == [2] * (T - 1) + [0] * (T - 1)  # unit by unit, as given
    assert long["position"].tolist() == list(range(1, T)) * 2
    assert long["value"].tolist() == [10.0 * t + 2 for t in range(1, T)] + [10.0 * t for t in range(1, T)]
    ref = reference()
    for key in ("char", "document", "line", "column"):
        assert long[key].tolist() == ref[key][1:] * 2, key
    np.testing.assert_array_equal(long["loss"], np.tile(rec.loss[1:], 2))
    wide = rec.frame(0, "h", units=[2, 0], start=1, stop=T)
    melted = wide.melt(id_vars=COLUMNS, value_vars=["unit_2", "unit_0"], var_name="unit", value_name="value")
    melted["unit"] = melted["unit"].str.removeprefix("unit_").astype(np.int64)
    assert long.equals(melted.astype(long.dtypes.to_dict()))
    last = rec.frame(0, "h", start=T - 1, tidy=True)  # the last position, every unit
    assert last[["position", "unit", "value"]].values.tolist() == [[T - 1, u, 10.0 * (T - 1) + u] for u in range(UNITS)]


def test_unit_and_window_at_the_last_index(rec):
    """Reads at the last position and the last unit are the stored values; one past is an error."""
    assert rec.unit(0, "h", UNITS - 1, T - 1, T).tolist() == [10.0 * (T - 1) + UNITS - 1]
    assert rec.unit(0, "h", 0, 0, 1).tolist() == [0.0]
    assert rec.unit(0, "h", UNITS - 1).tolist() == [10.0 * t + UNITS - 1 for t in range(T)]
    assert rec.window(0, "h", T - 1, T).tolist() == [[10.0 * (T - 1) + u for u in range(UNITS)]]
    assert rec.window(0, "h", T - 2, T + 5).shape == (2, UNITS)  # a slice stops at the end
    assert rec.stream(0, "h")[-1].tolist() == rec.stream(0, "h")[T - 1].tolist()
    with pytest.raises(ProbeError, match=r"no unit 3 \(units are 0..2\)"):
        rec.unit(0, "h", UNITS)
    with pytest.raises(IndexError):
        rec.stream(0, "h")[T]
