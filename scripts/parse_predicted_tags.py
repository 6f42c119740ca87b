"""Put a tagger's predicted UPOS into a gold CoNLL-U file, for parsing with predicted tags.

``meprop-numba predict`` of a ``--task pos --tag upos`` checkpoint writes one
tag per word (ID, FORM and UPOS; the other columns ``_``). This script copies
the gold file (HEAD and DEPREL kept, so the parse can still be scored) with
its UPOS column replaced by those predictions, word by word in order
(multiword-token lines and empty nodes are copied unchanged; the forms must
agree), and prints the tagger's UPOS accuracy against the gold column.

Usage::

    python scripts/parse_predicted_tags.py GOLD.conllu TAGGED.conllu --out MIXED.conllu
"""
import argparse
import sys


def _word_lines(path):
    """(form, upos) of every word line of a CoNLL-U file, in order."""
    with open(path, encoding="utf-8-sig") as handle:
        for line in handle:
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) == 10 and cols[0].isdigit():
                yield cols[1], cols[3]


def merge(gold_path, tagged_path, out):
    """Write `gold_path` to `out` with the UPOS of `tagged_path`; return (words, correct)."""
    tagged = _word_lines(tagged_path)
    words = correct = 0
    with open(gold_path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) == 10 and cols[0].isdigit():
                try:
                    form, tag = next(tagged)
                except StopIteration:
                    raise ValueError(f"{tagged_path}: ends before {gold_path} line {number}") from None
                if form != cols[1]:
                    raise ValueError(f"{gold_path} line {number}: form {cols[1]!r}, but the tagged "
                                     f"file has {form!r} at this word")
                words += 1
                correct += tag == cols[3]
                cols[3] = tag
                line = "\t".join(cols) + "\n"
            out.write(line)
    if next(tagged, None) is not None:
        raise ValueError(f"{tagged_path}: more words than {gold_path}")
    return words, correct


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gold", help="CoNLL-U file with gold UPOS, HEAD and DEPREL")
    p.add_argument("tagged", help="the tagger's CoNLL-U output for the same words")
    p.add_argument("--out", required=True, help="CoNLL-U file to write")
    args = p.parse_args(argv)
    with open(args.out, "w", encoding="utf-8") as out:
        words, correct = merge(args.gold, args.tagged, out)
    print(f"{words} words, UPOS accuracy of the tagged file {100 * correct / words:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
