"""The CoNLL-U reader: trees, and a clear error naming file and line for malformed input."""
import pytest

from meprop_numba.data.conllu import CoNLLUError, read_conllu

GOOD = """\
# sent_id = 1
1\tI\tI\tPRON\tPRP\t_\t2\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t0\troot\t_\t_
3\tit\tit\tPRON\tPRP\t_\t2\tobj\t_\t_
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t2:conj\t_

1\tParis\tParis\tPROPN\tNNP\t_\t0\troot\t_\t_
2\t's\t's\tPART\tPOS\t_\t1\tcase:poss\t_\t_
"""

WORD = "1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n"


def _write(tmp_path, text, name="x.conllu"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_reads_trees_and_skips_multiword_tokens_and_empty_nodes(tmp_path):
    sents = read_conllu(_write(tmp_path, GOOD))
    assert [s.words for s in sents] == [("I", "do", "it"), ("Paris", "'s")]
    assert sents[0].head == (2, 0, 2) and sents[0].deprel == ("nsubj", "root", "obj")
    assert sents[1].deprel == ("root", "case:poss")  # subtypes kept by the reader
    assert sents[1].upos == ("PROPN", "PART") and sents[1].xpos == ("NNP", "POS")


def test_untreed_sentences_have_no_head(tmp_path):
    text = "1\tHi\thi\tINTJ\tUH\t_\t_\t_\t_\t_\n2\tyou\tyou\tPRON\tPRP\t_\t_\t_\t_\t_\n"
    (sent,) = read_conllu(_write(tmp_path, text))
    assert sent.head is None and sent.deprel is None and sent.words == ("Hi", "you")


def test_byte_order_mark_is_accepted(tmp_path):
    sents = read_conllu(_write(tmp_path, b"\xef\xbb\xbf" + GOOD.encode("utf-8")))
    assert sents == read_conllu(_write(tmp_path, GOOD, "plain.conllu"))


def test_windows_line_ends_are_accepted(tmp_path):
    sents = read_conllu(_write(tmp_path, GOOD.replace("\n", "\r\n")))
    assert sents == read_conllu(_write(tmp_path, GOOD, "plain.conllu"))


BAD = [
    # (text, line of the error, words of the message)
    ("1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\nx\tyou\tyou\tPRON\tPRP\t_\t1\tobj\t_\t_\n", 2, "bad ID 'x'"),
    ("1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n3\tyou\tyou\tPRON\tPRP\t_\t1\tobj\t_\t_\n", 2,
     "out of sequence"),
    ("1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n2\tyou\tyou\tPRON\tPRP\t_\tone\tobj\t_\t_\n", 2,
     "bad HEAD 'one'"),
    ("1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n2\tyou\tyou\tPRON\tPRP\t_\t3\tobj\t_\t_\n", 2,
     "beyond the sentence's 2 words"),
    ("1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n2\tyou\tyou\tPRON\tPRP\t_\t-1\tobj\t_\t_\n", 2,
     "bad HEAD '-1'"),
    ("1\ta\ta\tX\tX\t_\t0\troot\t_\t_\n2\tb\tb\tX\tX\t_\t3\tdep\t_\t_\n"
     "3\tc\tc\tX\tX\t_\t2\tdep\t_\t_\n", 2, "cycle through words [2, 3]"),
    ("1\ta\ta\tX\tX\t_\t1\tdep\t_\t_\n", 1, "HEAD 0"),            # only a self-loop: no root
    ("1\ta\ta\tX\tX\t_\t0\troot\t_\t_\n2\tb\tb\tX\tX\t_\t0\troot\t_\t_\n", 2, "2 words with HEAD 0"),
    ("1\ta\ta\tX\tX\t_\t0\troot\t_\t_\n2\tb\tb\tX\tX\t_\t_\t_\t_\t_\n", 2, "bad HEAD '_'"),
    ("1\ta\ta\tX\tX\t_\t0\t_\t_\t_\n", 1, "without a DEPREL"),
    (WORD + "\n# sent_id = 2\n1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n\n" + WORD, 3, "empty sentence"),
    (WORD + "\n# only a comment\n", 3, "empty sentence"),
    ("1 Hi hi INTJ UH _ 0 root _ _\n", 1, "separated by spaces"),
    ("1\tHi\tINTJ\n", 1, "expected 10 tab-separated columns, got 3"),
    ("1\tHi\thi\t_\tUH\t_\t0\troot\t_\t_\n", 1, "no UPOS tag"),
    (WORD.encode("utf-8") + b"2\tcaf\xe9\tcafe\tNOUN\tNN\t_\t1\tobj\t_\t_\n", 2, "not UTF-8"),
]


@pytest.mark.parametrize("text, line, words", BAD, ids=[b[2] for b in BAD])
def test_malformed_input_names_file_and_line(tmp_path, text, line, words):
    path = _write(tmp_path, text)
    with pytest.raises(CoNLLUError) as info:
        read_conllu(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert words in str(info.value)
    assert info.value.line == line and info.value.path == str(path)


def test_max_sentences_stops_early(tmp_path):
    # the malformed second sentence is never read
    path = _write(tmp_path, WORD + "\n" + "1 bad\n")
    assert len(read_conllu(path, max_sentences=1)) == 1
    with pytest.raises(CoNLLUError):
        read_conllu(path)
