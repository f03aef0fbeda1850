"""Pictures: cross-attention heat maps of one translation, and training curves (PNG)."""

import numpy as np
import tensorflow as tf

from keras_transformer._optional import require


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (the `plots` extra)."""
    matplotlib = require("matplotlib", "plots", "The pictures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cross_attention(translator, text, block=-1):
    """Greedy-translates `text` and returns what each output token attended to.

    Returns:
        `(source_tokens, output_tokens, weights)`: the source word pieces, the
        generated word pieces (up to and including `[END]`), and the
        cross-attention probabilities of decoder block `block`, shape
        `(num_heads, len(output_tokens), len(source_tokens))`.
    """
    source_ids = translator.tokenize(tf.constant([text]))
    length = int(tf.math.count_nonzero(source_ids))
    generated, steps = translator.core.greedy_with_attention(source_ids)
    rows = [blocks[block][:, :length] for blocks in steps]  # [N, S] each
    weights = np.stack(rows, axis=1)  # [N, T, S]
    source = [translator.source_tokenizer.id_to_token(int(i)) for i in source_ids[0, :length]]
    output = [translator.target_tokenizer.id_to_token(i) for i in generated]
    return source, output, weights


def plot_attention(translator, text, path, block=-1):
    """Saves one heat map per head of `block`'s cross-attention (source × output) to `path`."""
    plt = _pyplot()

    source, output, weights = cross_attention(translator, text, block)
    heads = weights.shape[0]
    columns = min(heads, 4)
    rows = -(-heads // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows),
                                squeeze=False)
    for head, axis in enumerate(axes.flat):
        if head >= heads:
            axis.axis("off")
            continue
        axis.imshow(weights[head], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        axis.set_title(f"head {head + 1}", fontsize=9)
        axis.set_xticks(range(len(source)), source, rotation=90, fontsize=7)
        axis.set_yticks(range(len(output)), output, fontsize=7)
    which = "the last decoder block" if block == -1 else f"decoder block {block}"
    figure.suptitle(f"Cross-attention of {which}: {text!r}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_history(history, path, metrics=("loss", "accuracy")):
    """Saves training and validation curves of `history` (a dict) to `path`."""
    plt = _pyplot()

    present = [m for m in metrics if m in history]
    figure, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.2),
                                squeeze=False)
    for axis, metric in zip(axes[0], present):
        epochs = range(1, len(history[metric]) + 1)
        axis.plot(epochs, history[metric], marker="o", label="training")
        if f"val_{metric}" in history:
            axis.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
