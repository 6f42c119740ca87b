"""Transition-based dependency parsing with a meProp hidden layer (``--task parse``).

A Chen and Manning (2014) style arc-standard parser, the meProp paper's third
task: :mod:`.transitions` (oracle, greedy parsing; compiled in
:mod:`._transitions`), :mod:`.data` (vocabularies, flat id arrays),
:mod:`.model` (the network), :mod:`.metrics` (UAS/LAS).
"""
from .data import ParseVocabulary, Treebank, universal_relation
from .metrics import attachment_scores
from .model import ParserModel
from .transitions import is_projective, oracle, parse

__all__ = ["ParseVocabulary", "ParserModel", "Treebank", "attachment_scores", "is_projective",
           "oracle", "parse", "universal_relation"]
