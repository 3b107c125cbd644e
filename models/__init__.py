"""Pure model code: candidate descriptions, the sum-pooling layer, the Keras builder.

Importing this package registers ``SumPooling2D`` with Keras, so a saved ``.keras``
file that uses it loads with ``keras.saving.load_model(path)`` (safe mode on).
"""

from models.architecture import Architecture, Block, Head
from models.cnn import build_model, compile_model
from models.layers import SumPooling2D

__all__ = ["Architecture", "Block", "Head", "SumPooling2D", "build_model", "compile_model"]
