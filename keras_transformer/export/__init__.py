"""Export: SavedModels that TensorFlow Serving (or plain TensorFlow) can load,
and CTranslate2 model directories for those who serve with the engine."""

from keras_transformer.export.ctranslate2 import export_ctranslate2, to_ctranslate2
from keras_transformer.export.saved_model import (
    export_saved_model,
    remove_abandoned_staging,
    versions,
)

__all__ = ["export_ctranslate2", "export_saved_model", "remove_abandoned_staging",
           "to_ctranslate2", "versions"]
