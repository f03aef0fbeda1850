"""Export: SavedModels that TensorFlow Serving (or plain TensorFlow) can load."""

from keras_transformer.export.saved_model import (
    export_saved_model,
    remove_abandoned_staging,
    versions,
)

__all__ = ["export_saved_model", "remove_abandoned_staging", "versions"]
