"""Check probe's C lexer (``probe.text.features``, C rules) against clang's lexer on real
Linux kernel sources, character by character.

What is compared, per character, in probe's convention (the state *after reading* the
character; see ``probe/features.py``):

- ``in_string``: inside a ``"..."`` string or a ``'...'`` character literal, from the
  opening quote (1) to the closing quote (0); prefixes ``L u U u8`` are 0. An
  unterminated literal runs to the end of its line (the newline 0).
- ``in_comment``: inside a ``/* */`` comment (its closing ``/`` 0) or a ``//`` comment
  (its newline 0).
- ``preprocessor``: on a directive's lines, from the start of the line holding the
  ``#`` to the newline that ends the directive (0).
- ``bracket_depth``: nesting of ``()[]{}`` outside literals and comments, clamped at 0.

The reference: clang's own lexer, through libclang (``pip install libclang``, which
ships the library in its wheel; its ``clang.cindex`` module). Every file is parsed as C
(``-x c -std=gnu11``, no include paths: the parse fails, the lexing does not) and
``clang_tokenize`` is run over the whole file. That lexes the raw file as a compiler
does: line splicing (backslash-newline) first, then comments, string and character
literals with every prefix, punctuation, each token with its exact byte extent. Labels
are then derived from the tokens alone, with none of probe's code:

- a COMMENT token is a comment: ``//`` ones whole, ``/* */`` ones without their last
  character when closed;
- a LITERAL token whose spelling is ``(u8|u|U|L)?`` then a quote is a literal, from
  the quote to its last character (exclusive); clang gives an unterminated literal (and
  the empty ``''``) as a PUNCTUATION ("unknown") token from its quote to the end of the
  line (or to the second quote), marked whole (or up to the second quote);
- PUNCTUATION tokens ``( [ {`` and ``) ] }`` are the brackets (depth clamped at 0, as
  probe does: an unmatched closer is dropped);
- a ``#`` token is a directive when it is the first token of a line, comments counting
  as blanks (C's translation phases 3-4: ``/* x */ #define A`` is a directive). Its
  span runs from the start of that line to the first newline after it that lies
  between tokens and is not spliced (a backslash, then optional blanks, then the
  newline: what clang and gcc accept), so a ``/* */`` comment carries it over lines.

Three facts about clang's tokens the reference corrects for: a token that follows a
line splice starts at the splice's backslash (``\\<newline>(`` is one ``(`` token), so
leading splices are cut off a token; a token's spelling may hold splices
(``u8\\<newline>"x"``, ``/\\<newline>/ c``), removed before it is read; an
unterminated ``/*`` at the end of a file gives no token at all, so the reference marks
the rest of the file from that ``/*``.

Why clang: it is the most independent check that is robust. It is a production
compiler's lexer, written with no knowledge of probe, and it sees comments. The
alternatives considered were weaker: pycparser's lexer (3.x, no longer PLY) refuses
comments (it reports an error at ``/*`` and then lexes the comment's words as code, so
an apostrophe in a comment opens a bogus character literal), and it neither splices
lines nor gives directives a span, so it would need a comment stripper in front;
``gcc -fpreprocessed -dD -E`` strips comments but reflows whitespace and splices lines,
so its output cannot be aligned to the input's characters without guessing (a comment
``/* x */`` followed by ``x`` is ambiguous). A hand-written state machine would be
independent of probe's regex but not of its author's reading of C.

Out of scope, for both: ``#if 0`` blocks are lexed like any code (which blocks are
compiled depends on the configuration); ``#include <linux/x.h>`` is not a string (the
raw lexer does not know it is in a directive and gives ``< linux / x . h >`` as
punctuation; probe does not mark angle header names either); trigraphs are off (clang's
and gcc's GNU modes ignore them, and so does probe). The one known difference: clang
ends a line at a ``\\r`` too (a lone one, or before ``\\n``), probe only at ``\\n`` (see
``EDGE_CASES``); the kernel's sources have no ``\\r\\n`` line ends.

Besides the kernel files, the tricky cases in ``EDGE_CASES`` (literals holding comment
markers, prefixes, line splices in odd places, directives after comments...) are run
through both: all must agree but the ones listed with a reason, the known differences.
And so must ``--random`` short random texts made of the pieces the lexers care about
(quotes, prefixes, backslashes, splices, comment markers, ``#``, brackets, newlines), a
differential test that finds what nobody thought of writing.

Usage::

    python bench/c_lexer.py                       # 300 files, seed 0, from the tarball
    python bench/c_lexer.py --files 1000 --seed 1
    python bench/c_lexer.py --dir /work/bench-data/linux-sample --show 20

With ``--tarball`` (default: the newest ``/usr/src/linux-source-*.tar.xz``, from
``apt-get install linux-source``) ``--files`` ``.c``/``.h`` members are drawn with
``--seed`` from the sorted member list and extracted (members only, streamed) under
``--out`` (default ``/work/bench-data/linux-sample``), then checked. With ``--dir`` the
``.c``/``.h`` files under it are checked (all of them, or ``--files`` drawn with
``--seed``). It prints, per label, the agreement (fraction of characters where probe
and the reference agree), probe's precision and recall against the reference (for
``bracket_depth``: the fraction of characters with the same depth), the number of
differing regions, and the first ``--show`` regions with file, line and context
(``[[...]]`` around the differing characters). It exits 1 if any label's agreement is
below ``--threshold`` (default 0.999: one character in a thousand), if an edge case
without a known reason differs or if a random text differs; 2 on a setup error.
"""
from __future__ import annotations

import argparse
import glob
import random
import re
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from probe.text.features import compute

LABELS = ("in_string", "in_comment", "preprocessor", "bracket_depth")
DEFAULT_OUT = Path("/work/bench-data/linux-sample")
_LITERAL = re.compile(rb"(?:u8|u|U|L)?(['\"])")
_SPLICE_BEFORE = re.compile(rb"\\[ \t\f\v]*\r?\Z")  # what comes before a spliced newline
_SPLICES = re.compile(rb"\\[ \t\f\v]*\r?\n")
_ESCAPED_END = re.compile(rb"(?<!\\)(?:\\\\)*\\\Z")  # an odd run of backslashes at the end
_LEADING_SPLICES = re.compile(rb"(?:\\[ \t\f\v]*\r?\n)*")
_OPENER = re.compile(rb"/(?:\\[ \t\f\v]*\r?\n)*\*")  # "/*", maybe split by splices
_CLOSED_BLOCK = re.compile(rb"\*(?:\\[ \t\f\v]*\r?\n)*/\Z")


# ---- the sample ---------------------------------------------------------------------

def default_tarball() -> str | None:
    found = sorted(glob.glob("/usr/src/linux-source-*.tar.xz"))
    return found[-1] if found else None


def sample_from_tarball(tarball: str, out: Path, files: int, seed: int) -> list[Path]:
    """Draw ``files`` .c/.h members with ``seed`` and extract them under ``out``.

    Two streamed passes over the tarball (the list of members, then the chosen ones):
    nothing else is extracted. Members already extracted are not written again.
    """
    with tarfile.open(tarball, "r|xz") as tf:
        names = sorted(m.name for m in tf if m.isfile() and m.name.endswith((".c", ".h")))
    chosen = sorted(random.Random(seed).sample(names, min(files, len(names))))
    paths = [out / name for name in chosen]
    missing = {name for name, p in zip(chosen, paths) if not p.exists()}
    if missing:
        with tarfile.open(tarball, "r|xz") as tf:
            for m in tf:
                if m.name in missing:
                    if m.name.startswith("/") or ".." in Path(m.name).parts:
                        raise SystemExit(f"unsafe member name {m.name!r}")
                    target = out / m.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tf.extractfile(m).read())
    return paths


def sample_from_dir(root: Path, files: int | None, seed: int) -> list[Path]:
    found = sorted(p for p in root.rglob("*") if p.suffix in (".c", ".h") and p.is_file())
    if files and files < len(found):
        found = sorted(random.Random(seed).sample(found, files))
    return found


# ---- the reference: clang's lexer ----------------------------------------------------

def clang_tokens(path: Path, size: int) -> list[tuple[str, int, int]]:
    """(kind, start byte, stop byte) of every token clang's lexer finds in the file."""
    import clang.cindex as ci

    index = getattr(clang_tokens, "index", None) or ci.Index.create()
    clang_tokens.index = index
    tu = index.parse(str(path), args=["-x", "c", "-std=gnu11", "-w", "-ferror-limit=1"],
                     options=ci.TranslationUnit.PARSE_SKIP_FUNCTION_BODIES)
    f = tu.get_file(str(path))
    extent = ci.SourceRange.from_locations(ci.SourceLocation.from_offset(tu, f, 0),
                                           ci.SourceLocation.from_offset(tu, f, size))
    return [(t.kind.name, t.extent.start.offset, t.extent.end.offset)
            for t in tu.get_tokens(extent=extent)]


def reference_spans(data: bytes, tokens: list[tuple[str, int, int]]) -> dict:
    """Byte spans of literals, comments and directives, and bracket steps, from the tokens."""
    strings, comments, directives, steps = [], [], [], []
    line_start, at_line_start, directive = 0, True, None  # directive: its start, when open
    prev_end = 0

    def gap(a: int, b: int) -> None:
        """Blanks between tokens: their unspliced newlines end lines (and directives)."""
        nonlocal line_start, at_line_start, directive
        for m in re.finditer(rb"\n", data[a:b]):
            nl = a + m.start()
            if _SPLICE_BEFORE.search(data[max(a, nl - 64):nl]):
                continue  # a line splice: the line goes on
            if directive is not None:
                directives.append((directive, nl))
                directive = None
            line_start, at_line_start = nl + 1, True

    for kind, start, stop in tokens:
        gap(prev_end, start)
        prev_end = stop
        lead = _LEADING_SPLICES.match(data, start, stop)
        start = lead.end()  # clang starts a token at the line splices before it
        text = data[start:stop]
        if kind == "COMMENT":
            if _SPLICES.sub(b"", text).startswith(b"//"):
                comments.append((start, stop))
            else:
                closed = len(text) >= 4 and _CLOSED_BLOCK.search(text) is not None
                comments.append((start, stop - closed))
            continue  # a comment is a blank: it does not end "at the start of a line"
        m = _LITERAL.match(_SPLICES.sub(b"", text)) if kind in ("LITERAL", "PUNCTUATION") else None
        if m:  # a literal, or (PUNCTUATION) one clang could not lex: unterminated, or ''
            q = m.group(1)
            quote = start + text.index(q)  # after the prefix, which may hold line splices
            body = data[quote + 1:stop]
            closed = body.endswith(q) and (kind == "LITERAL" or _ESCAPED_END.search(body[:-1]) is None)
            strings.append((quote, stop - closed))
        elif kind == "PUNCTUATION" and text in (b"(", b"[", b"{", b")", b"]", b"}"):
            steps.append((start, 1 if text in (b"(", b"[", b"{") else -1))
        elif kind == "PUNCTUATION" and text == b"#" and at_line_start and directive is None:
            directive = line_start
        at_line_start = False
    tail = _OPENER.search(data, prev_end)  # clang drops an unterminated comment at the end
    gap(prev_end, tail.start() if tail else len(data))
    if tail:
        comments.append((tail.start(), len(data)))
    if directive is not None:
        directives.append((directive, len(data)))
    return {"strings": strings, "comments": comments, "directives": directives, "steps": steps}


def byte_to_char(text: str) -> np.ndarray:
    """Index of the character holding each byte of ``text`` in UTF-8, then len(text)."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    width = np.where(codes < 0x80, 1, np.where(codes < 0x800, 2, np.where(codes < 0x10000, 3, 4)))
    width[(codes >= 0xDC80) & (codes <= 0xDCFF)] = 1  # surrogateescape: one raw byte
    return np.append(np.repeat(np.arange(len(text)), width), len(text))


def reference_labels(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    data = path.read_bytes()
    text = data.decode("utf-8", "surrogateescape")
    spans = reference_spans(data, clang_tokens(path, len(data)))
    b2c = byte_to_char(text)
    n = len(text)

    def mask(byte_spans) -> np.ndarray:
        m = np.zeros(n, dtype=np.int8)
        for a, b in byte_spans:
            m[b2c[a]:b2c[b]] = 1
        return m

    steps = np.zeros(n, dtype=np.int64)
    for at, step in spans["steps"]:
        steps[b2c[at]] += step
    c = np.cumsum(steps)
    depth = c - np.minimum(np.minimum.accumulate(c), 0) if n else c
    return text, {"in_string": mask(spans["strings"]), "in_comment": mask(spans["comments"]),
                  "preprocessor": mask(spans["directives"]), "bracket_depth": depth}


# ---- hand-made tricky cases, also run through both ----------------------------------

# name: (text, why probe and clang differ there; "" where they must agree)
EDGE_CASES: dict[str, tuple[str, str]] = {
    "quote_char_literals": ("c = '\"'; d = '\\''; e = '\\\\';\n", ""),
    "comment_markers_in_strings": ('s = "/* x */ // y"; t = \'/*\';\n', ""),
    "line_comment_in_block": ("/* a // b */ x;\n", ""),
    "block_comment_in_line": ("// a /* b\nx;\n", ""),
    "prefixes": ('a = L"w" u8"x" u"y" U"z" L\'c\' u8\'d\' U\'e\';\n', ""),
    "include_angle_and_quote": ("#include <linux/a'b.h>\n#include \"x.h\"\n", ""),
    "splice_in_string": ('s = "ab\\\ncd";\n', ""),
    "escape_then_splice_in_string": ('s = "ab\\\\\ncd";\nx;\n', ""),
    "splice_with_blanks_in_line_comment": ("// a \\ \nb\nc;\n", ""),
    "splice_with_blanks_in_directive": ("#define A 1 \\ \n  + 2\nx(;\n", ""),
    "splice_inside_comment_opener": ("x /\\\n* c */ y;\n", ""),
    "splice_inside_comment_closer": ("/* c *\\\n/ y;\n", ""),
    "splice_inside_line_comment_opener": ("x /\\\n/ c\ny;\n", ""),
    "splice_after_prefix": ('a = u8\\\n"x";\n', ""),
    "splice_before_bracket": ("#define F(x) \\\n(x)\ny;\n", ""),
    "comment_then_directive": ("/* c */ #define A (\nx;\n", ""),
    "multiline_comment_then_directive": ("/* c\n */ #define A (\nx;\n", ""),
    "directive_after_comment_mid_function": ("{\n\t/* abort */#\n\tb();\n}\n", ""),
    "hash_after_splice_mid_line": ("x; \\\n#define A (\ny;\n", ""),
    "form_feed_before_directive": ("\f#define A 1\nx;\n", ""),
    "stringizing_hash": ("#define S(x) #x \\\n  # x\nx;\n", ""),
    "directive_in_comment": ("/*\n#define X\n*/\n", ""),
    "null_directive": ("#\nx;\n", ""),
    "multichar_and_hex_char": ("c = 'ab'; d = '\\x41';\n", ""),
    "unterminated_char_in_error": ("#error don't\nx;\n", ""),
    "empty_char": ("c = '';\nx;\n", ""),
    "unterminated_string_at_eof": ('x = "abc', ""),
    "unterminated_comment_at_eof": ("x; /* abc\n def", ""),
    "digraphs": ("a<:1:> <% %>\n", ""),  # <: :> <% %> are brackets in C; not counted by either
    "hashhash_at_line_start": ("## x (\n#define A (\n", ""),  # "##" is not "#": no directive
    "hashes_joined_by_a_splice": ("#\\\n# x (\ny;\n", ""),  # "##" again, after splicing
    "splice_before_directive": ("\\\n#define A (\nx;\n", ""),  # the directive takes the line
    "crlf_line_comment": ("x; // c\r\ny;\r\n", ("probe: only \\n ends a line, so the \\r before "
                                                "it is inside the // comment; clang ends the "
                                                "comment before \\r\\n")),
    "lone_cr": ("a; // c\rb;\n", "probe: only \\n ends a line; clang (and gcc) also end a line at "
                                 "a lone \\r (old Mac line ends)"),
}


def compare_text(text: str, path: Path) -> tuple[list[str], str]:
    """The labels on which probe and clang differ on ``text`` (written to ``path``), and
    the first one's values side by side ("" when they agree)."""
    path.write_bytes(text.encode())
    _, ref = reference_labels(path)
    got = compute(text, list(LABELS), languages=["c"])
    bad = [k for k in LABELS if (got[k].to_numpy() != ref[k]).any()]
    if not bad:
        return [], ""
    marks = ["".join(str(min(int(v), 9)) for v in m) for m in (got[bad[0]].to_numpy(), ref[bad[0]])]
    return bad, f"{text!r}\n      probe {marks[0]}\n      clang {marks[1]}"


def check_edge_cases(tmp: Path) -> list[tuple[str, list[str], str, str]]:
    """(name, differing labels, probe's and the reference's values, reason) per differing case."""
    out = []
    for name, (text, reason) in EDGE_CASES.items():
        bad, marks = compare_text(text, tmp / f"{name}.c")
        if bad:
            out.append((name, bad, marks, reason))
    return out


# what random texts are made of: the characters and pairs the lexers care about (no \r:
# a lone \r is a known difference, see EDGE_CASES)
PIECES = ["\f", "?", "1", "U", "R", "##", "a", " ", "\n", "\\", "/", "*", "#", "'", '"', "(", ")",
          "{", "x;", "L", "u8", "\t", "\\\n", "\\ \n", "/*", "*/", "//"]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 25)))


def check_random_texts(tmp: Path, count: int, seed: int) -> list[tuple[list[str], str]]:
    """Differential test on ``count`` random texts: (labels, values) of each that differs."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        bad, marks = compare_text(random_text(rng), tmp / "random.c")
        if bad:
            out.append((bad, marks))
    return out


# ---- the comparison -----------------------------------------------------------------

def regions(diff: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of True."""
    edges = np.flatnonzero(np.diff(np.r_[0, diff.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def context(text: str, a: int, b: int, width: int = 50) -> str:
    shown = text[a:b] if b - a <= 3 * width else text[a:a + width] + " ... " + text[b - width:b]
    return repr(text[max(0, a - width):a] + "[[" + shown + "]]" + text[b:b + width])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tarball", help="linux-source tarball (default: /usr/src/linux-source-*.tar.xz)")
    ap.add_argument("--dir", type=Path, help="check the .c/.h files under this folder instead")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the tarball sample is extracted")
    ap.add_argument("--files", type=int,
                    help="how many files to draw (default 300 from a tarball, all of --dir; 0: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    ap.add_argument("--show", type=int, default=8, help="differing regions listed per label (default 8)")
    ap.add_argument("--threshold", type=float, default=0.999,
                    help="lowest agreement accepted for every label (default 0.999)")
    ap.add_argument("--random", type=int, default=2000,
                    help="random texts of the lexers' characters to compare too (default 2000)")
    args = ap.parse_args(argv)
    try:
        import clang.cindex  # noqa: F401
    except ImportError:
        print("needs libclang: pip install libclang", file=sys.stderr)
        return 2
    if args.dir is not None:
        paths, root = sample_from_dir(args.dir, args.files, args.seed), args.dir
    else:
        tarball = args.tarball or default_tarball()
        if not tarball:
            print("no /usr/src/linux-source-*.tar.xz: apt-get install linux-source, or give --dir",
                  file=sys.stderr)
            return 2
        files = 300 if args.files is None else args.files or 10**9
        paths = sample_from_tarball(tarball, args.out, files, args.seed)
        root = args.out
    if not paths:
        print("no .c/.h files to check", file=sys.stderr)
        return 2

    same = {k: 0 for k in LABELS}
    both = {k: 0 for k in LABELS}
    probe_on = {k: 0 for k in LABELS}
    ref_on = {k: 0 for k in LABELS}
    found: dict[str, list[tuple[str, int, str]]] = {k: [] for k in LABELS}
    counts = {k: 0 for k in LABELS}
    total = 0
    for path in paths:
        text, ref = reference_labels(path)
        if not text:
            continue
        got = compute(text, list(LABELS), languages=["c"])
        total += len(text)
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        for k in LABELS:
            p, r = got[k].to_numpy(), ref[k]
            same[k] += int((p == r).sum())
            if k == "bracket_depth":
                ref_on[k] += int((r > 0).sum())
            else:
                both[k] += int((p & r).sum())
                probe_on[k] += int(p.sum())
                ref_on[k] += int(r.sum())
            runs = regions(p != r)
            counts[k] += len(runs)
            for a, b in runs[:max(0, args.show - len(found[k]))]:
                line = text.count("\n", 0, a) + 1
                what = f"probe {int(p[a])} ref {int(r[a])}"
                found[k].append((f"{name}:{line}", b - a, f"{what}: {context(text, a, b)}"))

    print(f"probe's C lexer against clang's lexer: {len(paths)} files, {total} characters")
    print(f"{'label':14} {'agreement':>10} {'precision':>10} {'recall':>10} {'differ':>7} "
          f"{'regions':>8} {'clang 1s':>9}")
    failed = []
    for k in LABELS:
        agree = same[k] / total
        if k == "bracket_depth":
            prec = rec = "-"
        else:
            prec = f"{both[k] / probe_on[k]:.6f}" if probe_on[k] else "-"
            rec = f"{both[k] / ref_on[k]:.6f}" if ref_on[k] else "-"
        share = f"{ref_on[k] / total:.2%}"  # bracket_depth: characters at depth > 0
        print(f"{k:14} {agree:10.6f} {prec:>10} {rec:>10} {total - same[k]:7d} {counts[k]:8d} {share:>9}")
        if agree < args.threshold:
            failed.append(k)
    for k in LABELS:
        if found[k]:
            print(f"\n{k}: first {len(found[k])} of {counts[k]} differing regions")
            for where, size, what in found[k]:
                print(f"  {where} ({size} chars) {what}")
    with tempfile.TemporaryDirectory() as tmp:
        edges = check_edge_cases(Path(tmp))
        randoms = check_random_texts(Path(tmp), args.random, args.seed)
    unexpected = [e for e in edges if not e[3]]
    print(f"\nedge cases: {len(EDGE_CASES) - len(edges)} of {len(EDGE_CASES)} agree; "
          f"{len(edges) - len(unexpected)} known differences, {len(unexpected)} unexpected")
    for name, bad, marks, reason in edges:
        print(f"  {name} ({', '.join(bad)}): {reason or 'UNEXPECTED'}\n      {marks}")
    print(f"\nrandom texts (seed {args.seed}): {args.random - len(randoms)} of {args.random} agree")
    for bad, marks in randoms[:args.show]:
        print(f"  ({', '.join(bad)}) {marks}")
    if failed:
        print(f"\nbelow the threshold {args.threshold}: {', '.join(failed)}")
    if unexpected:
        print(f"\nunexpected differences on edge cases: {', '.join(e[0] for e in unexpected)}")
    return 1 if failed or unexpected or randoms else 0


if __name__ == "__main__":
    sys.exit(main())
