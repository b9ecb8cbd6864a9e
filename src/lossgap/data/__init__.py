"""From a corpus file to token rows: streaming readers (corpus.py), the local mini-Pile builder (corpus_build.py),
tokenization with an explicit BOS/EOS policy (encode.py), packed or single rows with explicit targets and windows
(layout.py), and the check that two tokenizers give the same ids (tokcheck.py).

May import: foundation, formats.
"""
