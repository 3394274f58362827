"""Per-character features: hand-checked examples, edge cases of the lexers, a
cross-check of the Python lexer against the standard library's own tokenizer, and a
property test (Hypothesis) that the lexers never fail on any text."""
import ast
import doctest
import importlib.util
import io
import random
import sysconfig
import tokenize
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.errors import ProbeError
from probe.text import c_lexer, python_lexer, user_features
from probe.text import features as F
from probe.text.features import BINARY, FEATURES, compute


def marks(text: str, name: str, **kw) -> str:
    """A binary feature as a string aligned with the text: '1' inside, '.' outside."""
    return "".join(".1"[v] for v in compute(text, [name], **kw)[name])


def values(text: str, name: str, **kw) -> list[int]:
    return compute(text, [name], **kw)[name].tolist()


def tokenize_masks(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(in_string, in_comment) from Python's tokenize, in the features' convention.

    A COMMENT token is marked whole (it never holds its newline). A STRING token is
    marked from its opening quote to its closing quote, exclusive: its prefix letters
    and its last character are dropped (tokenize only yields closed strings).
    """
    starts = np.cumsum([0] + [len(line) + 1 for line in text.split("\n")])
    string, comment = np.zeros(len(text), bool), np.zeros(len(text), bool)
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.STRING, tokenize.COMMENT):
            a = starts[tok.start[0] - 1] + tok.start[1]
            b = starts[tok.end[0] - 1] + tok.end[1]
            assert text[a:b] == tok.string
            if tok.type == tokenize.COMMENT:
                comment[a:b] = True
                continue
            prefix = len(tok.string) - len(tok.string.lstrip("rRbBfFuU"))
            quote = tok.string[prefix]
            assert quote in "'\"" and tok.string.endswith(quote) and len(tok.string) - prefix >= 2
            string[a + prefix:b - 1] = True
    return string, comment


def test_docstring_examples_hold():
    for module in (F, python_lexer, c_lexer, user_features):  # features and its lexers
        assert doctest.testmod(module).attempted and doctest.testmod(module).failed == 0, module.__name__


# ---- the convention: every feature is the state after reading character t ---------

def test_opening_quote_is_inside_closing_quote_is_outside():
    text = "x = 'ab' + \"cd\" + ''"
    expect = "....111....111....1."
    assert marks(text, "in_string") == expect
    assert marks(text, "in_short_string") == expect
    assert marks(text, "in_string", python=False) == expect


def test_prefix_letters_are_outside():
    for prefix in ["r", "b", "f", "u", "rb", "br", "fr", "rf", "R", "B", "F", "U", "Rb", "bR", "FR", "rF"]:
        for quote in ["'", '"', "'''", '"""']:
            text = f"{prefix}{quote}a{quote}"
            # prefix 0, opening quote(s) and `a` 1, closing quotes 1 but the last
            expect = "." * len(prefix) + "1" * (len(quote) + 1) + "1" * (len(quote) - 1) + "."
            assert marks(text, "in_string") == expect, text
    text = "f'{x!r}' + Rb\"y\" + if'z' + ub'a'"  # `if`, `ub`: identifiers, outside all the same
    assert marks(text, "in_string") == ".111111." + "..." + "..11." + "..." + "..11." + "..." + "..11."


def test_triple_quotes_only_the_last_closing_quote_is_outside():
    # after reading the 1st or 2nd closing quote the string may go on: '''a''b''' holds a''b
    assert marks('"""abc"""', "in_long_string") == "11111111."
    assert marks("'''a''b'''", "in_long_string") == "111111111."
    assert marks('x = """a""" + 1', "in_string") == "....111111....."
    assert marks('"""a"""', "in_short_string") == "......."


def test_triple_quote_is_long_from_its_first_opening_quote():
    text = "'''a'''"
    assert marks(text, "in_long_string") == "111111."
    assert marks(text, "in_short_string") == "......."


def test_unterminated_strings_are_inside_to_the_end_of_their_span():
    assert marks("x = 'ab\ny", "in_short_string") == "....111.."  # the newline is outside
    assert marks("x = 'ab", "in_short_string") == "....111"  # the end of the text
    assert marks("x = 'a\\'", "in_short_string") == "....1111"  # an escaped quote closes nothing
    assert marks("x = '''a\n''", "in_long_string") == "....1111111"  # two quotes do not close
    assert marks('x = """a\nb', "in_string") == "....111111"


def test_comment_hash_is_inside_the_newline_outside():
    text = "x = 1  # c\ny # \n"
    assert marks(text, "in_comment") == ".......111." + "..11."
    assert marks("#\n#", "in_comment") == "1.1"


def test_bracket_depth_is_the_depth_after_the_character():
    assert values("(x)", "bracket_depth") == [1, 1, 0]
    assert values("f('(') + g", "bracket_depth") == [0, 1, 1, 1, 1, 0, 0, 0, 0, 0]


def test_plain_text_opening_quote_inside_closing_quote_outside():
    text = "say \"hi\" and 'it's'"
    assert marks(text, "in_string", python=False) == "....111." + "....." + "11111."


# ---- strings and comments (Python) --------------------------------------------------

def test_escaped_quote_stays_inside():
    text = r'x = "a\"b" + c'
    assert marks(text, "in_string") == "....11111....."


def test_other_quote_inside_a_string_does_not_close_it():
    text = "s = \"it's\" + 'say \"hi\"'"
    assert marks(text, "in_string") == "....11111....111111111."


def test_triple_quotes_span_lines_with_quotes_and_hash():
    text = '"""a "b" \'c\'\n# d """ # e\nx'
    assert marks(text, "in_long_string") == "1" * 19 + "." * 7
    assert marks(text, "in_short_string") == "." * 26
    assert marks(text, "in_comment") == "." * 21 + "111" + ".."


def test_raw_string_backslash_still_protects_the_quote():
    assert marks(r"r'\'' + 'x'", "in_string") == ".111....11."
    assert marks(r"r'\\' # c", "in_string") == ".111....."
    assert marks(r"r'\\' # c", "in_comment") == "......111"


def test_hash_inside_a_string_is_not_a_comment():
    text = "x = '#no' # yes\n"
    assert marks(text, "in_comment") == "..........11111."
    assert marks(text, "in_string") == "....1111........"


def test_backslash_newline_continues_a_short_string():
    text = "s = 'a\\\nb' + 1"
    assert marks(text, "in_short_string") == "....11111....."


def test_unterminated_short_string_ends_at_end_of_line():
    text = "x = 'abc\ny = (1)"
    assert marks(text, "in_string") == "....1111........"
    assert values(text, "bracket_depth")[-3:] == [1, 1, 0]


def test_unterminated_triple_quote_runs_to_end_of_document():
    text = "x = '''abc\ny = (1) # c"
    assert marks(text, "in_long_string") == "...." + "1" * 18
    assert marks(text, "in_comment") == "." * 22


def test_in_string_is_short_or_long():
    text = "a = 'x' + '''y\n''' + \"z\"  # '\n"
    df = compute(text)
    assert (df.in_string == (df.in_short_string | df.in_long_string)).all()
    assert df.in_long_string.sum() == 7 and df.in_short_string.sum() == 4


# ---- brackets ------------------------------------------------------------------------

def test_nested_brackets_depth_after_each_character():
    assert values("a[(b, {c})]", "bracket_depth") == [0, 1, 2, 2, 2, 2, 3, 3, 2, 1, 0]


def test_brackets_in_strings_and_comments_do_not_count():
    text = 'f("(", \')\')  # (((\ng('
    depth = values(text, "bracket_depth")
    assert depth[:11] == [0] + [1] * 9 + [0]
    assert depth[11:19] == [0] * 8
    assert depth[-2:] == [0, 1]


def test_unmatched_closers_clamp_at_zero():
    assert values(")) (x))(", "bracket_depth") == [0, 0, 0, 1, 1, 0, 0, 1]


def test_clamped_depth_matches_a_simple_loop():
    rng = random.Random(0)
    for _ in range(50):
        text = "".join(rng.choice("()[]{}x") for _ in range(rng.randrange(1, 60)))
        depth, expect = 0, []
        for ch in text:
            depth = max(0, depth + (ch in "([{") - (ch in ")]}"))
            expect.append(depth)
        assert values(text, "bracket_depth") == expect, text


# ---- lines ---------------------------------------------------------------------------

def test_line_features_on_a_small_multiline_text():
    text = "ab\n\ncde\n  x"
    assert values(text, "column") == [0, 1, 2, 0, 0, 1, 2, 3, 0, 1, 2]
    assert values(text, "line_length") == [2, 2, 2, 0, 3, 3, 3, 3, 3, 3, 3]
    assert values(text, "chars_to_eol") == [2, 1, 0, 0, 3, 2, 1, 0, 3, 2, 1]
    assert values(text, "indent") == [0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2]


def test_consecutive_newlines_are_empty_lines():
    df = compute("\n\n\na")
    assert df.column.tolist() == [0, 0, 0, 0]
    assert df.line_length.tolist() == [0, 0, 0, 1]
    assert df.chars_to_eol.tolist() == [0, 0, 0, 1]


def test_tabs_count_one_each_in_indent():
    text = "\tif x:\n\t\ty\n \tz\n"
    assert values(text, "indent") == [1] * 7 + [2] * 4 + [2] * 4


def test_blank_line_indent_is_its_whitespace():
    assert values("   \nx", "indent") == [3, 3, 3, 3, 0]


# ---- documents -----------------------------------------------------------------------

def test_documents_reset_state():
    doc1, doc2 = 'x = """open\n(a', "y = 1 # c\n"
    text = doc1 + doc2
    docs = [(0, len(doc1)), (len(doc1), len(text))]
    df = compute(text, documents=docs)
    second = df.iloc[len(doc1):]
    assert second.in_string.sum() == 0
    assert second.in_comment.tolist() == [0] * 6 + [1] * 3 + [0]
    assert second.bracket_depth.sum() == 0
    assert second.column.tolist()[:3] == [0, 1, 2]  # doc1 had no trailing newline
    assert df.chars_to_eol.iloc[len(doc1) - 1] == 1  # doc1 ends its own line
    # without the boundary the triple quote runs on through doc2
    assert compute(text).in_string.iloc[len(doc1):].all()


def test_documents_give_the_same_as_separate_calls():
    docs = ["a = '''x\n", "(b # )\n  c", "'d' (", "\n\n[e]"]
    text = "".join(docs)
    bounds = np.cumsum([0] + [len(d) for d in docs])
    together = compute(text, documents=list(zip(bounds[:-1], bounds[1:])))
    apart = np.concatenate([compute(d).to_numpy() for d in docs])
    np.testing.assert_array_equal(together.to_numpy(), apart)


def test_documents_must_cover_the_text():
    with pytest.raises(ProbeError, match="cover"):
        compute("abcd", documents=[(0, 2)])
    with pytest.raises(ProbeError, match="without gaps"):
        compute("abcd", documents=[(0, 2), (3, 4)])


# ---- plain text ----------------------------------------------------------------------

def test_plain_text_rules():
    text = "don't say \"no (\" or 'it's' # (x)"
    assert marks(text, "in_string", python=False) == "." * 10 + "11111." + "...." + "11111." + "." * 6
    assert marks(text, "in_comment", python=False) == "." * len(text)
    assert values(text, "bracket_depth", python=False)[-4:] == [0, 1, 1, 0]
    # a quote without a partner on its line is just a character
    assert marks('a " b\n"c"', "in_string", python=False) == "......11."


# ---- C rules -------------------------------------------------------------------------

def cmarks(text: str, name: str) -> str:
    return marks(text, name, languages=["c"])


def test_c_string_with_escapes_opening_quote_inside_closing_quote_outside():
    text = r'p("a\"b\\", L"w");'
    assert cmarks(text, "in_string") == "..1111111....11..."
    assert cmarks(text, "in_short_string") == cmarks(text, "in_string")
    assert cmarks(text, "in_long_string") == "." * len(text)


def test_c_char_literals_are_short_literals():
    text = r"c = '\'' + '\\' + '\0' + '\"' + '(';"
    assert cmarks(text, "in_short_string") == "....111....111....111....111....11.."
    assert values(text, "bracket_depth", languages=["c"]) == [0] * len(text)


def test_c_backslash_newline_continues_a_literal_unterminated_ends_at_line_end():
    assert cmarks('s = "ab\\\ncd";', "in_string") == "....1111111.."
    assert cmarks("s = \"ab\nt = 'x\n(", "in_string") == "....111.....11.."
    assert cmarks('s = "ab', "in_string") == "....111"


def test_c_block_comment_spans_lines_closing_slash_outside():
    text = "a /* x\n * (y */ b"
    assert cmarks(text, "in_comment") == "..111111111111..."
    assert cmarks("/**/x", "in_comment") == "111.."
    assert cmarks("/*/ x */", "in_comment") == "1111111."  # '/*/' does not close
    assert cmarks("/*** x ***/", "in_comment") == "1111111111."


def test_c_unterminated_block_comment_runs_to_end_of_document():
    text = "x; /* open\n(y\n"
    assert cmarks(text, "in_comment") == "...11111111111"
    assert values(text, "bracket_depth", languages=["c"]) == [0] * len(text)


def test_c_line_comment_newline_outside_backslash_newline_continues_it():
    text = "a; // (c '\nb"
    assert cmarks(text, "in_comment") == "...1111111.."
    assert cmarks(text, "in_string") == "." * len(text)
    assert cmarks("// a \\\n b\nc", "in_comment") == "111111111.."
    assert cmarks("// a \\\\\n b", "in_comment") == "1111111111"  # the last backslash splices


def test_c_comment_markers_inside_literals_and_quotes_inside_comments():
    text = 'u = "/* no */ // no"; /* it\'s "x" */'
    assert cmarks(text, "in_string") == "....111111111111111" + "." * (len(text) - 19)
    assert cmarks(text, "in_comment") == "." * 22 + "1111111111111."


def test_c_preprocessor_lines_with_continuation_newline_outside():
    text = '#define F(x) \\\n\t((x) + "#")\nint a; # x\n  #  include <a.h>\n#\n'
    assert cmarks(text, "preprocessor") == ("1" * 27 + "." + "." * 11 +
                                            "1" * 18 + "." + "1.")
    depth = values(text, "bracket_depth", languages=["c"])
    assert depth[8:12] == [0, 1, 1, 0] and depth[16:20] == [1, 2, 2, 1]
    assert cmarks(text, "in_string") == "." * 23 + "11" + "." * (len(text) - 25)


def test_c_preprocessor_carried_over_lines_by_a_block_comment_not_inside_one():
    text = "#if A /* x\ny */ || B\nz\n/*\n#no */\n"
    assert cmarks(text, "preprocessor") == "1" * 20 + "." * 13
    assert cmarks("x /*\n  # y */ #z\n", "preprocessor") == "." * 17


def test_c_brackets_do_not_count_inside_literals_and_comments():
    text = "f(\"(\", '[', /* { */ a) // )\n}"
    depth = values(text, "bracket_depth", languages=["c"])
    assert depth == [0] + [1] * 20 + [0] * 7 + [0]


def test_c_line_splices_inside_comment_markers_and_after_prefixes():
    # C joins the lines first (translation phase 2), so a backslash-newline may split
    # "/*", "*/", "//" or a literal's prefix; the splice is in the state before it
    assert cmarks("x /\\\n* c */ y;", "in_comment") == ".." + "1" * 8 + "...."
    assert cmarks("/* c *\\\n/ y;", "in_comment") == "1" * 8 + "...."
    assert cmarks("x /\\\n/ c\ny;", "in_comment") == ".." + "1" * 6 + "..."
    assert cmarks('a = u8\\\n"x";', "in_string") == "." * 8 + "11.."


def test_c_backslash_before_a_spliced_newline_escapes_the_next_line():
    # "ab\\<newline>cd": the last backslash splices, the first escapes the 'c'
    text = 's = "ab\\\\\ncd";\nx;'
    assert cmarks(text, "in_string") == "...." + "1" * 8 + "....."


def test_c_backslash_blanks_newline_is_a_splice_as_in_gcc_and_clang():
    assert cmarks("// a \\ \nb\nc;", "in_comment") == "1" * 9 + "..."
    text = "#define A 1 \\ \n  + 2\nx(;"
    assert cmarks(text, "preprocessor") == "1" * 20 + "...."


def test_c_hash_after_a_splice_is_not_a_directive():
    # after splicing, the '#' is in the middle of the line "x; #define A ("
    assert cmarks("x; \\\n#define A (\ny;", "preprocessor") == "." * 19


def test_c_directive_after_a_comment_on_its_line():
    # a comment is a blank in C: this '#' (a null directive, from the kernel's
    # drivers/net/can/mscan/mscan.c) is the first token of its line
    text = "\tif (a) {\n\t\t/* Abort */#\n\t\tb();\n"
    assert cmarks(text, "preprocessor") == "." * 10 + "1" * 14 + "." * 8
    # a comment holding a newline joins its lines: the directive starts on the first
    assert cmarks("/* c\n */ #define A (\nx;", "preprocessor") == "1" * 20 + "..."
    assert cmarks("x /* a\n */ # y\n", "preprocessor") == "." * 15


def test_c_form_feed_before_a_directive():
    assert cmarks("\f#define A 1\nx;", "preprocessor") == "1" * 12 + "..."


def test_c_hashhash_is_not_a_directive_and_a_directive_takes_the_splices_before_it():
    assert cmarks("## x (\n#define A (\n", "preprocessor") == "." * 7 + "1" * 11 + "."
    assert cmarks("#\\\n# x (\ny;", "preprocessor") == "." * 11  # spliced: "## x ("
    assert cmarks("\\\n#define A\nx;", "preprocessor") == "1" * 11 + "..."


def test_c_empty_char_literal_is_closed_by_its_second_quote():
    assert cmarks("c = '';\nd;", "in_string") == "....1" + "." * 5


def test_preprocessor_is_zero_in_python_and_plain_text():
    text = "#define A 1\n  # x\n"
    assert marks(text, "preprocessor") == "." * len(text)
    assert marks(text, "preprocessor", python=False) == "." * len(text)
    assert marks(text, "in_comment") == "11111111111." + "..111."


# ---- choosing the rules per document -------------------------------------------------

def test_rules_are_chosen_per_document_by_extension():
    docs = ["/* 'a' */ #x\n", "# 'a' /* b\n", "/* 'a' */\n", "#include <x>\n"]
    names = ["drivers/a.c", "tools/b.py", "notes.txt", "include/d.H"]
    text = "".join(docs)
    bounds = np.cumsum([0] + [len(d) for d in docs])
    documents = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    df = compute(text, documents=documents, document_names=names)
    for d, lang in zip(range(4), ["c", "python", "python", "c"]):
        part = df.iloc[bounds[d]:bounds[d + 1]].reset_index(drop=True)
        np.testing.assert_array_equal(part.to_numpy(), compute(docs[d], languages=[lang]).to_numpy())
    assert "".join(".1"[v] for v in df.in_comment[:13]) == "11111111....."
    assert df.preprocessor.iloc[bounds[3]:].tolist() == [1] * 12 + [0]
    # unknown extensions follow python=: plain text there
    plain = compute(text, documents=documents, document_names=names, python=False)
    np.testing.assert_array_equal(plain.iloc[bounds[2]:bounds[3]].to_numpy(),
                                  compute(docs[2], python=False).to_numpy())
    # and the explicit languages list, None meaning the python= rule
    same = compute(text, documents=documents, languages=["c", "python", None, "c"])
    np.testing.assert_array_equal(same.to_numpy(), df.to_numpy())


def test_language_of_and_bad_language_lists():
    assert [F.language_of(n) for n in ["a.c", "b.h", "c.py", "d.S", "Makefile", "e.c.orig"]] == \
        ["c", "c", "python", "python", "python", "python"]
    assert F.language_of("x.txt", python=False) == "plain"
    with pytest.raises(ProbeError, match="2 given for 1 document"):
        compute("abc", document_names=["a.c", "b.c"])
    with pytest.raises(ProbeError, match="unknown language 'rust'"):
        compute("abc", languages=["rust"])
    with pytest.raises(ProbeError, match="not both"):
        compute("abc", languages=["c"], document_names=["a.c"])
    # empty documents count in the alignment
    df = compute("/*x", documents=[(0, 0), (0, 3)], document_names=["e.py", "f.c"])
    assert df.in_comment.tolist() == [1, 1, 1]


def test_default_features_of_a_recording_use_its_document_names(tmp_path):
    from probe import open_recording
    from probe.analysis import detectors
    from probe.recording import h5format
    text = "/* c */\n# py\n"
    values = {(0, "h"): np.zeros((len(text), 2))}
    path = h5format.write(tmp_path / "rec.h5", text, values, streams=("h",),
                          documents=[("k/a.c", 0, 8), ("s/b.py", 8, 13)])
    with open_recording(path) as rec:
        df = detectors.default_features(rec)
    assert "".join(".1"[v] for v in df.in_comment) == "111111.." + "1111."
    assert df.preprocessor.sum() == 0


# ---- the C lexer against hand-labelled kernel-like source -----------------------------

def runs(text: str, name: str, extra: int = 0, **kw) -> list[str]:
    """The runs of 1s of a binary feature, each with its ``extra`` following characters."""
    v = np.r_[0, compute(text, [name], **kw)[name].to_numpy(), 0]
    edges = np.flatnonzero(np.diff(v))
    return [text[a:b + extra] for a, b in zip(edges[::2], edges[1::2])]


KERNEL_SNIPPET = r'''// SPDX-License-Identifier: GPL-2.0-only
/*
 *  TUN - Universal TUN/TAP device driver ("it's" {not} code).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#include <linux/module.h>
#define TUN_MINOR \
	200 /* see
	       Documentation/admin-guide/devices.txt */

static const char *tun_names[] = { "tun\"0\"", "tap\\", "{(" };
static char sep = '\'', nul = '\0', brace = '{';

static int tun_get(int *v) /* (v) */
{
	if (v && (v[0] > 1)) // '(' unmatched
		return -EINVAL;
	return printk(KERN_INFO "a %s\n",
		      "b /* c */");
}
#if IS_ENABLED(CONFIG_NET) /* x
*/ && 1
#endif
'''


def test_c_lexer_on_a_hand_labelled_kernel_snippet():
    text = KERNEL_SNIPPET
    kw = {"languages": ["c"]}
    assert runs(text, "in_comment", 1, **kw) == [
        "// SPDX-License-Identifier: GPL-2.0-only\n",
        "/*\n *  TUN - Universal TUN/TAP device driver (\"it's\" {not} code).\n */",
        "/* see\n\t       Documentation/admin-guide/devices.txt */",
        "/* (v) */",
        "// '(' unmatched\n",
        "/* x\n*/",
    ]
    assert runs(text, "in_string", 1, **kw) == [
        '": "', '"tun\\"0\\""', '"tap\\\\"', '"{("', "'\\''", "'\\0'", "'{'",
        '"a %s\\n"', '"b /* c */"',
    ]
    assert runs(text, "preprocessor", **kw) == [
        "#define pr_fmt(fmt) KBUILD_MODNAME \": \" fmt",
        "#include <linux/module.h>",
        "#define TUN_MINOR \\\n\t200 /* see\n\t       Documentation/admin-guide/devices.txt */",
        "#if IS_ENABLED(CONFIG_NET) /* x\n*/ && 1",
        "#endif",
    ]
    df = compute(text, **kw)
    assert df.in_long_string.sum() == 0
    depth = df.bracket_depth.to_numpy()
    lines = np.cumsum([0] + [len(line) + 1 for line in text.split("\n")])
    depth_at_eol = {text[a:b - 1].strip(): depth[b - 2] for a, b in zip(lines[:-1], lines[1:]) if b - a > 1}
    assert depth_at_eol["{"] == 1 and depth_at_eol["return -EINVAL;"] == 1
    assert depth_at_eol["if (v && (v[0] > 1)) // '(' unmatched"] == 1
    assert depth_at_eol['return printk(KERN_INFO "a %s\\n",'] == 2
    assert depth_at_eol["}"] == 0
    assert depth[text.index("v[0]") + 2] == 4  # { ( ( [
    assert depth.max() == 4 and depth[-1] == 0


# ---- the C lexer against texts built from pieces with known labels --------------------

C_ESCAPES = {"\\": "\\\\", '"': '\\"', "'": "\\'", "\n": "\\n", "\t": "\\t", "\0": "\\0"}


def c_literal(value: str, quote: str) -> str:
    return quote + "".join(C_ESCAPES.get(ch, ch) for ch in value) + quote


def build_c(rng: random.Random) -> tuple[str, dict[str, list[int]], list[tuple[int, str, str]]]:
    """A C-like text, its expected binary features, and (start, value, quote) of each literal.

    Made of pieces whose labels are known by construction: code with brackets, string
    and character literals of random values (C escapes), comments of both kinds with
    quotes, brackets and comment markers inside, preprocessor lines with continuations.
    """
    pieces: list[tuple[str, dict[str, int]]] = []
    literals = []
    alphabet = "ab (){}[]'\"\\/*#\n\t\0;"
    directive = 0

    def add(s: str, **labels):
        labels["preprocessor"] = directive
        pieces.append((s, labels))

    def literal():
        quote = rng.choice("'\"")
        value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(quote == "'", 5)))
        lit = c_literal(value, quote)
        literals.append((sum(len(p) for p, _ in pieces), value, quote))
        add(lit[:-1], in_string=1)
        add(lit[-1])

    def comment() -> bool:
        """Adds a comment; True for a // comment (which ends the line)."""
        body = "".join(rng.choice(alphabet.replace("\n", "").replace("\\", "")) for _ in range(rng.randrange(8)))
        if rng.random() < 0.5:
            body = body.replace("*", "")
            add("/*" + body + ("\n" + body if rng.random() < 0.5 else "") + "*", in_comment=1)
            add("/")
            return False
        add("//" + body + ("\\\n" + body if rng.random() < 0.3 else ""), in_comment=1)
        return True

    def code():
        add("".join(rng.choice("x1 ;+(){}[]") for _ in range(rng.randrange(6))))

    for _ in range(rng.randrange(1, 12)):
        directive = int(rng.random() < 0.3)
        if directive:
            add(rng.choice(["#", " \t# ", "#  "]) + rng.choice(["define A", "if B", "include"]) + " ")
        for _ in range(rng.randrange(1, 4)):
            choice = rng.random()
            if choice < 0.3:
                literal()
            elif choice < 0.55:
                if comment():
                    break
            elif choice < 0.65 and directive:
                add(" \\\n ")
            else:
                code()
            add(" ")
        directive = 0
        add("\n")
    text = "".join(s for s, _ in pieces)
    expect = {name: [] for name in ("in_string", "in_comment", "preprocessor")}
    for s, labels in pieces:
        for name in expect:
            expect[name] += [labels.get(name, 0)] * len(s)
    return text, expect, literals


def test_c_lexer_on_texts_built_with_known_labels():
    rng = random.Random(14)
    for _ in range(300):
        text, expect, literals = build_c(rng)
        df = compute(text, languages=["c"])
        for name, want in expect.items():
            got = df[name].tolist()
            if got != want:
                i = next(k for k, (a, b) in enumerate(zip(got, want)) if a != b)
                raise AssertionError(f"{name} differs at {i}: {text[max(0, i - 30):i + 10]!r} in {text!r}")
        # every literal found decodes to the value it was built from
        for start, value, quote in literals:
            stop = start + 1 + df.in_string.iloc[start + 1:].to_numpy().argmin()
            assert text[stop] == quote
            assert ast.literal_eval(text[start:stop + 1]) == value


# ---- the C lexer against clang's lexer ------------------------------------------------

BENCH_C_LEXER = Path(__file__).resolve().parents[1] / "bench" / "c_lexer.py"


def test_c_lexer_agrees_with_clang_on_edge_cases_and_random_texts(tmp_path):
    """bench/c_lexer.py checks the C lexer against clang's lexer on kernel sources (see
    docs/c-lexer.md); its hand-made edge cases and a few hundred random texts run here
    when libclang is installed (pip install libclang)."""
    pytest.importorskip("clang.cindex")
    spec = importlib.util.spec_from_file_location("c_lexer_bench", BENCH_C_LEXER)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert [case[0] for case in bench.check_edge_cases(tmp_path) if not case[3]] == []
    assert bench.check_random_texts(tmp_path, 300, seed=14) == []


# ---- the DataFrame and user features -------------------------------------------------

def test_compute_columns_dtypes_and_index():
    df = compute("f(x)\n", regex={"x": "x"}, custom={"one": lambda t: np.ones(len(t))})
    assert df.columns.tolist() == list(F.FEATURES) + ["x", "one"]
    assert df.index.tolist() == [0, 1, 2, 3, 4]
    assert all(df[n].dtype == np.int8 for n in F.BINARY)
    assert df.column.dtype == np.int32 and df.bracket_depth.dtype == np.int32


def test_regex_feature_marks_every_character_of_a_match():
    df = compute("x = 10 + 2\ny", ["digits"], regex={"digits": r"\d+", "eol": "$"})
    assert df.columns.tolist() == ["digits"]
    assert "".join(".1"[v] for v in df.digits) == "....11...1.."


def test_regex_feature_is_multiline():
    assert marks("ab\nac", "a_start", regex={"a_start": "^a."}) == "11.11"


def test_callable_feature_and_its_length_check():
    df = compute("abc", ["upper"], custom={"upper": lambda t: [c.isupper() for c in t.upper()]})
    assert df.upper.tolist() == [1, 1, 1] and df.upper.dtype == np.int8
    with pytest.raises(ProbeError, match=r"'short': returned 2 values for a text of 3 characters"):
        compute("abc", custom={"short": lambda t: [0, 1]})


def test_bad_regex_error_message():
    with pytest.raises(ProbeError) as err:
        compute("abc", regex={"oops": "(a"})
    assert str(err.value).startswith("feature regex 'oops': does not compile: missing )")


def test_unknown_feature_lists_the_available_ones():
    with pytest.raises(ProbeError, match="unknown feature 'depth'.*bracket_depth.*mine"):
        compute("abc", ["depth"], regex={"mine": "a"})


def test_user_feature_may_not_shadow_a_builtin():
    with pytest.raises(ProbeError, match="built-in"):
        compute("abc", regex={"column": "a"})


def test_empty_text_is_an_error():
    with pytest.raises(ProbeError, match="empty text"):
        compute("")


def test_parse_feature_args():
    assert F.parse_feature_args(["eq=a==b", "d=\\d"]) == {"eq": "a==b", "d": "\\d"}
    with pytest.raises(ProbeError, match="NAME=REGEX"):
        F.parse_feature_args(["nodigits"])


def test_is_binary():
    assert F.is_binary("in_string") and not F.is_binary("indent")
    assert F.is_binary("mine", np.array([0, 1, 0])) and not F.is_binary("mine", np.array([0, 2]))
    with pytest.raises(ProbeError):
        F.is_binary("mine")


# ---- the Python lexer agrees with tokenize on real source ----------------------------

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MODULES = ["json/decoder.py", "textwrap.py", "string.py", "shlex.py", "tokenize.py", "ast.py"]


@pytest.mark.parametrize("module", MODULES)
def test_lexer_agrees_with_tokenize_on_stdlib(module):
    path = STDLIB / module
    if not path.exists():
        pytest.skip(f"{path} not in this Python")
    text = path.read_text(encoding="utf-8")
    string, comment = tokenize_masks(text)
    assert string.any() and comment.any()
    df = compute(text)
    mismatch = np.flatnonzero((df.in_string.to_numpy() != string) | (df.in_comment.to_numpy() != comment))
    assert mismatch.size == 0, f"first disagreement at {mismatch[0]}: {text[mismatch[0] - 40:mismatch[0] + 20]!r}"


def test_lexer_agrees_with_tokenize_on_edge_cases():
    text = ("a = r'\\'' + b'\\\\' + f\"{x!r:>{w}}\" + U'u' + bR'''\\''''' # '''\n"
            "s = ('x' \"y\" '''z\n'\"#\n''')  # (\n"
            "c = 'a\\\nb' if'q'else\"#\"\n")
    string, comment = tokenize_masks(text)
    df = compute(text)
    assert (df.in_string.to_numpy() == string).all()
    assert (df.in_comment.to_numpy() == comment).all()


# text made of what the lexers care about: quotes, prefixes, escapes, comments, brackets,
# lines, C comment markers and preprocessor lines
LEXED = "'\"#\\()[]{}\nrbfux \t=a/*"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(LEXED), max_size=200) | st.text(max_size=120),
       st.booleans(), st.data())
def test_the_lexers_never_fail_and_stay_aligned_on_any_text(text, python, data):
    if not text:
        with pytest.raises(ProbeError, match="empty text"):
            compute(text, python=python)
        return
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=3))) if len(text) > 1 else []
    bounds = [0, *[c for c in cuts if 0 < c < len(text)], len(text)]
    documents = list(zip(bounds[:-1], bounds[1:]))
    languages = data.draw(st.lists(st.sampled_from([None, *F.LANGUAGES]),
                                   min_size=len(documents), max_size=len(documents)))
    df = compute(text, documents=documents, python=python, languages=languages)
    assert len(df) == len(text) and list(df.columns) == list(FEATURES)
    assert (df["bracket_depth"] >= 0).all() and (df["column"] >= 0).all() and (df["indent"] >= 0).all()
    for name in BINARY:
        assert set(df[name].unique()) <= {0, 1}, name
    inside = df["in_short_string"].to_numpy() | df["in_long_string"].to_numpy()
    assert (inside <= df["in_string"].to_numpy()).all()
    assert not (df["in_comment"].to_numpy() & df["in_string"].to_numpy()).any()
    chars = np.array(list(text))
    rules = np.repeat([lang or ("python" if python else "plain") for lang in languages], np.diff(bounds))
    c = rules == "c"
    # only C comments may hold a newline; only C has preprocessor lines, and no long strings
    assert not df["in_comment"].to_numpy()[(chars == "\n") & ~c].any()
    assert not df["preprocessor"].to_numpy()[~c].any() and not df["in_long_string"].to_numpy()[c].any()
    # the convention: a string starts on its opening quote and ends after a closing quote
    # (0 on it) or, unterminated, before the newline (not in plain text) or at the end of
    # its document
    s = df["in_string"].to_numpy().astype(bool)
    before = np.r_[False, s[:-1]]
    before[bounds[:-1]] = False  # a document starts outside any string
    assert set(chars[s & ~before]) <= {"'", '"'}
    assert set(chars[before & ~s & (rules == "plain")]) <= {"'", '"'}
    assert set(chars[before & ~s]) <= {"'", '"', "\n"}
    # a C comment starts on a '/', a C directive on a line start
    com = df["in_comment"].to_numpy().astype(bool)
    before = np.r_[False, com[:-1]]
    before[bounds[:-1]] = False
    assert set(chars[com & ~before & c]) <= {"/"}
    pre = df["preprocessor"].to_numpy().astype(bool)
    starts = pre & ~np.r_[False, pre[:-1]]
    assert (df["column"].to_numpy()[starts] == 0).all()
    # every document gives what it gives alone, with its rules
    for (a, b), lang in zip(documents, languages):
        alone = compute(text[a:b], python=python, languages=[lang])
        np.testing.assert_array_equal(df.iloc[a:b].to_numpy(), alone.to_numpy())
