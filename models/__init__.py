"""Pure model code: candidate descriptions, sum pooling, the Keras builder.

Every model built here uses built-in Keras layers only: a saved ``.keras`` file loads
with ``keras.saving.load_model(path)`` (safe mode on) where cnnsearch is not installed.
"""

from cnnsearch.models.architecture import Architecture, Block, Head
from cnnsearch.models.cnn import build_model, compile_model
from cnnsearch.models.layers import sum_pooling_2d

__all__ = ["Architecture", "Block", "Head", "build_model", "compile_model", "sum_pooling_2d"]
