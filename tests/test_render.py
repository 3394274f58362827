"""probe.output.render: colours, escaping of untrusted text, the standalone page, ``probe render``."""
from __future__ import annotations

import re

import numpy as np

from probe.cli import main
from probe.output import render
from probe.recording.reader import open_recording

NASTY = "<script>alert(1)</script> <img src=x onerror=alert(1)> a & b \"q\" 'r'\n"


def spans(html: str) -> list[str]:
    return re.findall(r"<span [^>]*>(.*?)</span>", html, flags=re.S)


def test_untrusted_text_is_escaped():
    html = render.colored_html(NASTY, np.linspace(-1, 1, len(NASTY)), "h")
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" not in html  # one span per character, so never a whole tag
    assert "&lt;" in html and "&gt;" in html and "&amp;" in html
    assert "&quot;" in html and "&#x27;" in html
    contents = spans(html)
    assert len(contents) == len(NASTY)
    assert "".join(contents).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") \
        .replace("&quot;", '"').replace("&#x27;", "'") == NASTY


ESCAPED = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"}  # a plain reference


def bodies(page: str) -> list[str]:
    """The content of each character's span in the page's coloured text."""
    return spans(page.split('<div class="probe-text">', 1)[1].split("</div>", 1)[0])


def test_every_character_body_is_escaped():
    """Each character's own span holds it escaped (not only its hover title): in every
    way colored_html writes a span, and in category_html and the standalone page."""
    want = [ESCAPED.get(ch, ch) for ch in NASTY]
    values = np.linspace(-1, 1, len(NASTY))
    last = len(NASTY) - 1
    for kwargs in ({}, {"titles": False}, {"titles": False, "mark": 100}, {"mark": 100 + last},
                   {"title_fmt": "{char}"}):
        html = render.colored_html(NASTY, values, "h", start=100, **kwargs)
        assert bodies(html) == want, kwargs
    assert bodies(render.colored_html(NASTY, values, "h", newlines="symbol")) == want[:-1] + [""]
    cats = render.category_html(NASTY, np.arange(len(NASTY)) % 3, {0: "#fff"}, {1: "<b>"})
    assert bodies(cats) == want and "&lt;b&gt;" in cats and "<b>" not in cats
    page = render.standalone_page(NASTY, values, "c", "t")
    assert bodies(page) == want and "<script" not in page and "<img" not in page


def test_hover_titles_name_position_character_and_value():
    html = render.colored_html("a<\n", [0.25, -0.5, 1.0], "h", start=100)
    titles = re.findall(r'title="([^"]*)"', html)
    assert titles == ["100  &#x27;a&#x27;  +0.250", "101  &#x27;&lt;&#x27;  -0.500", "102  \\n  +1.000"]


def test_newlines_and_indentation_are_kept():
    html = render.colored_html("if x:\n    y\n", np.zeros(12), "c")
    assert html.count("\n") == 2 and "white-space: pre" in render.css()
    assert 'class="d10 nl"' in html  # the faint ↵ comes from the nl class
    one_line = render.colored_html("a\nb", np.zeros(3), "c", newlines="symbol")
    assert "\n" not in one_line


def test_different_values_get_different_colours():
    for stream, values in [("c", [-5.0, -0.3, 0.0, 0.3, 5.0]), ("h", [-1, -0.5, 0, 0.5, 1]),
                           ("f", [0.0, 0.25, 0.5, 0.75, 1.0])]:
        cols = render.colors(values, stream)
        assert len(set(cols)) == 5, (stream, cols)


def test_diverging_centre_is_white_and_ends_are_blue_and_red():
    white, blue, red = render.colors([0.0, -1.0, 1.0], "h")
    assert white == "#ffffff"
    assert int(blue[5:7], 16) > int(blue[1:3], 16)  # more blue than red
    assert int(red[1:3], 16) > int(red[5:7], 16)
    assert render.colors([0.0], "f") == ["#ffffff"]  # gates start white at 0


def test_c_is_coloured_by_tanh_and_values_are_clipped():
    assert render.palette_index([100.0], "c")[0] == render.DIVERGING_STEPS - 1
    assert render.palette_index([np.arctanh(0.5)], "c")[0] == render.palette_index([0.5], "h")[0]
    assert render.palette_index([np.nan, 2.0], "i").tolist() == [0, render.SEQUENTIAL_STEPS - 1]
    # a stream no model records (a derived one, probe encode): sequential over its own range
    assert render.palette_index([0.0, 50.0, 100.0], "dir").tolist() == [0, 5, 10]
    assert render.palette_index([0.0, 50.0], "dir", scale=(0.0, 50.0)).tolist() == [0, 10]
    assert render.value_scale([1.0, 1.0]) == (1.0, 2.0)  # never empty


def test_standalone_page_needs_no_network():
    page = render.standalone_page(NASTY, np.zeros(len(NASTY)), "c", "unit <7> & co")
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<title>unit &lt;7&gt; &amp; co</title>" in page
    assert 'class="probe-legend"' in page


def test_cli_render_writes_the_page(recording_path, tmp_path, capsys):
    out = tmp_path / "cell.html"
    assert main(["render", str(recording_path), "--layer", "1", "--stream", "c", "--unit", "3",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: layer 1, stream c, unit 3,")
    page = out.read_text(encoding="utf-8")
    with open_recording(recording_path) as rec:
        assert len(spans(page.split('<div class="probe-text">')[1])) == len(rec)  # < 3000 chars
        values = rec.unit(1, "c", 3)
    first = re.search(r'<span class="(d\d+)[^"]*" title="0 ', page).group(1)
    assert first == f"d{render.palette_index(values[:1], 'c')[0]}"


def test_cli_render_escapes_the_recorded_text(tmp_path, capsys):
    """``probe render`` of a recording whose text is hostile: every character's span holds
    it escaped, from the first character to the last."""
    from probe.recording import h5format
    text = NASTY * 3
    path = h5format.write(tmp_path / "r.h5", text, {(0, "c"): np.zeros((len(text), 2))})
    out = tmp_path / "cell.html"
    assert main(["render", str(path), "--layer", "0", "--stream", "c", "--unit", "1",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    page = out.read_text(encoding="utf-8")
    assert bodies(page) == [ESCAPED.get(ch, ch) for ch in text]
    assert "<script" not in page and "<img" not in page
    last = len(text) - 1
    assert main(["render", str(path), "--layer", "0", "--stream", "c", "--unit", "0", "--start", "1",
                 "--stop", str(last + 1), "--out", str(out), "--force"]) == 0
    assert bodies(out.read_text(encoding="utf-8")) == [ESCAPED.get(ch, ch) for ch in text[1:]]


def test_cli_render_errors_clearly(recording_path, tmp_path, capsys):
    out = tmp_path / "cell.html"
    assert main(["render", str(recording_path), "--layer", "0", "--stream", "c", "--unit", "99",
                 "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"probe: error: {recording_path}: no unit 99 (units are 0..7)\n"
    assert not out.exists()
    out.write_text("keep")
    assert main(["render", str(recording_path), "--layer", "0", "--stream", "c", "--unit", "1",
                 "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"probe: error: {out}: already exists; pass --force to overwrite\n"
    assert out.read_text() == "keep"
    assert main(["render", str(recording_path), "--layer", "0", "--stream", "q", "--unit", "1",
                 "--out", str(out), "--force"]) == 1
    assert "no stream 'q'" in capsys.readouterr().err


def test_cli_render_creates_missing_folders_but_not_inside_a_file(recording_path, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "cell.html"
    assert main(["render", str(recording_path), "--layer", "0", "--stream", "c", "--unit", "1",
                 "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in out.parent.iterdir()) == ["cell.html"]  # no temporary left
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    bad = blocker / "sub" / "cell.html"
    assert main(["render", str(recording_path), "--layer", "0", "--stream", "c", "--unit", "1",
                 "--out", str(bad)]) == 1
    assert capsys.readouterr().err == f"probe: error: {bad}: cannot create a folder inside {blocker}: it is a file\n"
    assert blocker.read_text() == "keep"
