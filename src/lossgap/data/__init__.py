"""From a corpus file to token rows: the files of a corpus and their format readers (readers.py), documents
selected and validated (corpus.py), the local mini-Pile builder (corpus_build.py), tokenization with an explicit
BOS/EOS policy and the token cap (encode.py), chat templates rendered as untrusted input (chat.py), packed or single
rows with explicit targets and windows (layout.py), and the check that two tokenizers give the same ids
(tokcheck.py).

May import: foundation, formats.
"""
