"""The cells dashboard in a real browser: ``bokeh serve`` in a subprocess, headless Chromium.

Bokeh 3 puts widget and Div contents in shadow roots, so queries walk them in JS.
Saves ``test-artifacts/dashboard.png``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from probe.output import browser

pytestmark = pytest.mark.skipif(not browser.available(), reason="needs Debian chromium and chromium-driver "
                                "(apt-get install chromium chromium-driver); CI installs them")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"

WALK = browser.WALK_JS  # every element matching a selector, inside shadow roots too
COLOURED = "return walkAll('div[data-probe] span, .probe-text span[title]').map(s => s.className).join(' ')"


@pytest.fixture
def served(recording_path, tmp_path):
    """``bokeh serve apps/cells`` over a folder holding the tiny recording; stopped afterwards."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    shutil.copy(recording_path, folder / "tiny.h5")
    with open(tmp_path / "serve.log", "w+") as log:
        try:
            with browser.serve_app(folder, log, timeout=60) as s:
                yield s.url
        except RuntimeError as e:
            log.seek(0)
            pytest.fail(f"{e}:\n{log.read()}")


@pytest.fixture
def chromium():
    with browser.driver(window="1400,1800", browser_log=True) as d:
        yield d


def wait(driver, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def test_dashboard_in_chromium(served, chromium):
    d = chromium
    d.get(served + "?recording=tiny.h5&layer=1&stream=c&unit=1")
    d.execute_script(WALK)
    first = wait(d, lambda d: d.execute_script(COLOURED))
    classes = first.split()
    assert len([c for c in classes if c.startswith("d")]) > 100  # one coloured span per character

    # choose another unit (as the spinner would) and the colours change
    d.execute_script("Bokeh.documents[0].get_model_by_name('unit').value = 4")
    second = wait(d, lambda d: (lambda t: t if t and t != first else None)(d.execute_script(COLOURED)))
    assert second != first
    wait(d, lambda d: "unit=4" in d.current_url)
    assert "recording=tiny.h5&layer=1&stream=c&unit=4" in d.current_url

    # a gate through the real <select>: the sequential palette
    d.execute_script("""
        const s = walkAll('select').find(e => [...e.options].some(o => o.text.startsWith('f · ')));
        const f = [...s.options].find(o => o.text.startsWith('f · '));
        s.value = f.value; s.dispatchEvent(new Event('change', {bubbles: true}));""")
    wait(d, lambda d: " s" in " " + d.execute_script(COLOURED) and "stream=f" in d.current_url)

    # hover titles carry position, character and value
    title = d.execute_script("return walkAll('.probe-text span[title]')[0].title")
    assert title.startswith("0  ")

    ARTIFACTS.mkdir(exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


# per block of stacked rows: for each row its cell, its characters' positions and left edges
STACKED = """
return walkAll('.stack .block').map(b => [...b.querySelectorAll('.srow')].map(r => ({
  label: r.querySelector('.lab').textContent,
  pos: [...r.querySelectorAll('span[title]')].map(s => parseInt(s.title, 10)),
  left: [...r.querySelectorAll('span[title]')].map(s => Math.round(s.getBoundingClientRect().left)),
})));
"""


def test_stacked_rows_align_and_a_span_is_selected_with_the_mouse(served, chromium):
    from selenium.webdriver.common.action_chains import ActionChains
    d = chromium
    d.get(served + "?recording=tiny.h5&layer=1&stream=c&window=1000&cells=0:c:1,1:c:2,1:h:3")
    d.execute_script(WALK)
    wait(d, lambda d: d.execute_script(COLOURED))

    def char(position):  # a character of the text window
        return d.execute_script(f"""return walkAll('.probe-text.pickable span[title]')
            .find(s => !s.closest('.stack') && s.title.startsWith('{position} '))""")

    ActionChains(d).click(char(40)).click(char(43)).perform()  # another tab is open: plain clicks
    tab = wait(d, lambda d: d.execute_script(
        "return walkAll('.bk-tab').find(t => t.textContent.trim() === 'select & match')"))
    ActionChains(d).click(tab).perform()
    blocks = wait(d, lambda d: (lambda b: b if b and b[0][0]["left"][0] > 0 else None)(d.execute_script(STACKED)))

    # one row per typed cell in every block, the same characters, each exactly under the others
    for block in blocks:
        assert [r["label"] for r in block] == ["0:c:1", "1:c:2", "1:h:3"]
        assert block[0]["pos"] == block[1]["pos"] == block[2]["pos"] and len(block[0]["pos"]) > 0
        assert block[0]["left"] == block[1]["left"] == block[2]["left"]
    shown = [p for b in blocks for p in b[0]["pos"]]  # the window (the recording is shorter), by lines of 120
    assert shown == list(range(len(shown))) and len(blocks) == -(-len(shown) // 120) > 1

    assert "span=" not in d.current_url

    # with the tab open, two clicks on characters select the span between them (both included)
    ActionChains(d).click(char(40)).click(char(43)).perform()
    wait(d, lambda d: "span=40:44" in d.current_url)
    said = wait(d, lambda d: d.execute_script(
        "return [...walkAll('.cells'), ...walkAll('.msg')].map(e => e.textContent).join(' ')"))
    assert "40:44" in said  # the cells on over it, or why there are none
    underlined = "return walkAll('.probe-text.pickable span.sel').filter(s => !s.closest('.stack')).length"
    wait(d, lambda d: d.execute_script(underlined) == 4)

    # pressing on one character and releasing on another selects the span too
    ActionChains(d).click_and_hold(char(60)).move_to_element(char(52)).release().perform()
    wait(d, lambda d: "span=52:61" in d.current_url)
    wait(d, lambda d: d.execute_script(underlined) == 9)

    ARTIFACTS.mkdir(exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / "match.png"))
    severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def test_clicking_a_character_explains_its_prediction(served, chromium):
    from selenium.webdriver.common.action_chains import ActionChains
    d = chromium
    d.get(served + "?recording=tiny.h5&layer=0&stream=c&unit=1")
    d.execute_script(WALK)
    wait(d, lambda d: d.execute_script(COLOURED))
    tab = wait(d, lambda d: d.execute_script(
        "return walkAll('.bk-tab').find(t => t.textContent.trim() === 'explain a prediction')"))
    ActionChains(d).click(tab).perform()
    char = wait(d, lambda d: d.execute_script(
        "return walkAll('.probe-text.pickable span[title]').find(s => s.title.startsWith('30 '))"))
    ActionChains(d).click(char).perform()
    note = "const m = Bokeh.documents[0].get_model_by_name('saliency-note'); return m.text"
    text = wait(d, lambda d: (lambda t: t if "after character 30" in t else None)(d.execute_script(note)))
    assert "Predicting" in text and "Most influential" in text
    assert [e for e in d.get_log("browser") if e["level"] == "SEVERE"] == []


# the stream menu's labels, the live box's font, the leaderboard's width, the match snippets' fit
MEASURE = """
const m = (name) => Bokeh.documents[0].get_model_by_name(name);
const el = (name) => Bokeh.index.find_one(m(name)).el;
const ctx = document.createElement('canvas').getContext('2d');
const select = el('stream').shadowRoot.querySelector('select');
const style = getComputedStyle(select);
ctx.font = style.font;
const room = select.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
const labels = [...select.options].map(o => o.text);
const snippets = walkAll('.slick-cell .probe-text').map(d => ({
  chars: d.querySelectorAll('span').length, text: d.scrollWidth, cell: d.closest('.slick-cell').clientWidth}));
return {
  room: room, widest: Math.max(...labels.map(t => ctx.measureText(t).width)), labels: labels,
  textarea: getComputedStyle(el('live-in').shadowRoot.querySelector('textarea')).fontFamily,
  board: el('leaderboard').getBoundingClientRect().width, tabs: el('tabs').getBoundingClientRect().width,
  snippets: snippets};
"""


def test_labels_fonts_and_tables_read_whole(served, chromium, recording_path):
    """Defects a new user saw: the stream menu cut its labels, the live box was proportional,
    the leaderboard filled a corner, match snippets stopped at ~30 characters of a wide column."""
    from selenium.webdriver.common.action_chains import ActionChains

    from probe.analysis import match
    from probe.recording.reader import open_recording
    with open_recording(recording_path) as rec:  # a span with cells on and matches elsewhere
        span = next((a, a + 3) for a in range(1, len(rec) - 3)
                    if not rec.text[a:a + 3].isspace() and _matches(match, rec, a))
    d = chromium
    d.get(served + f"?recording=tiny.h5&layer=1&stream=c&unit=1&span={span[0]}:{span[1]}")
    d.execute_script(WALK)
    wait(d, lambda d: d.execute_script(COLOURED))
    for title in ("leaderboard", "select & match"):
        tab = wait(d, lambda d: d.execute_script(
            f"return walkAll('.bk-tab').find(t => t.textContent.trim() === '{title}')"))
        ActionChains(d).click(tab).perform()
        if title == "leaderboard":
            wait(d, lambda d: d.execute_script("return walkAll('.slick-row').length > 3"))
    # the longest labels the menu can have: a recorded stream's and probe encode's / probe errors --store's
    d.execute_script("""const s = Bokeh.documents[0].get_model_by_name('stream');
        s.options = [...s.options, ['dir', 'dir · probe directions (9)'], ['ngram', 'ngram · against n-grams (3)']];""")
    got = wait(d, lambda d: (lambda r: r if len(r["snippets"]) > 2 and len(r["labels"]) == 8 else None)(
        d.execute_script(MEASURE)))
    assert got["widest"] <= got["room"] - 16, got  # 16 px for the arrow
    assert "monospace" in got["textarea"] or "Mono" in got["textarea"], got["textarea"]
    assert got["board"] >= 0.95 * got["tabs"], got
    for s in got["snippets"]:
        assert s["text"] <= s["cell"], s  # nothing cut off …
    assert max(s["text"] for s in got["snippets"]) >= 0.85 * got["snippets"][0]["cell"], got["snippets"]  # … and full
    assert [e for e in d.get_log("browser") if e["level"] == "SEVERE"] == []


def _matches(match, rec, a: int) -> bool:
    try:
        units = match.select(rec, 1, "c", a, a + 3, 0.3)
    except Exception:  # noqa: BLE001 - no cell on there
        return False
    return len(match.search(rec, 1, "c", units, 0.3, top=5)) > 2
