"""The `keras-transformer` command's entry point: TensorFlow's start-up noise filtered out.

TensorFlow's C++ start-up messages (oneDNN notices, CUDA probing on a machine
without a GPU, absl's pre-initialization warning) go straight to the process's
standard error, whatever `TF_CPP_MIN_LOG_LEVEL` says for some of them. The
command imports TensorFlow and initializes its devices with standard error
captured, then passes on every line that is not one of those notices. Keras's
"Your input ran out of data" warning, which every `fit` on a dataset of unknown
length prints once, is silenced too. `--verbose` keeps everything.

This module stands beside the `keras_transformer` package, not inside it:
importing anything inside the package runs its `__init__`, which imports Keras
and so TensorFlow, too late to quiet. `main` quiets TensorFlow first, then
imports the package and runs `keras_transformer.cli.main`. Importing the package
from your own code (or `python -m keras_transformer.cli`) changes nothing.
"""

import os
import re
import sys
import tempfile
import warnings

_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWE]\d{4} [\d:. ]+\d+ \S+\] .*(oneDNN|cuda|CUDA|cuInit|TensorRT|GPU will not be used))"
)


def main(argv=None):
    """The `keras-transformer` command: `keras_transformer.cli.main`, on a quiet console."""
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    quiet_tensorflow(verbose="--verbose" in argv)
    from keras_transformer import cli

    return cli.main(argv)


def quiet_tensorflow(verbose=False):
    """Imports TensorFlow (and its devices) without the start-up notices, unless `verbose`."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            # Device discovery probes CUDA; it must not create the context, which
            # MultiWorkerMirroredStrategy configures later.
            tf.config.list_physical_devices()
            try:  # its shared library logs the same notices again when it loads
                import tensorflow_text  # noqa: F401
            except ImportError:
                pass
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not _NOISE.match(line):
                    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
