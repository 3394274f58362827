"""Stage 1, text: files → documents, vocabularies, per-position features, n-gram baselines.

Takes source files (the Python standard library, a folder, a glob, a tar); gives ``Corpus``
splits and their encoding (``corpus``), one label per position — the state *after reading*
position t — for every built-in or regex feature (``features``, from ``python_lexer``,
``c_lexer``, ``builtin``, ``user_features`` and ``spans``), and character n-gram models
with Kneser-Ney smoothing (``ngram``). ``tokens`` maps a text to positions that are
characters, words or a vocabulary's longest matches, each with its span in the text (the
first step of word-level models; nothing uses it yet). Imports nothing else of probe's but
its errors.
"""
