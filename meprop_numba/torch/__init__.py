"""meProp layers for PyTorch models."""
from .lstm import MePropLSTM
