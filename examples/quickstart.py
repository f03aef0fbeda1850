"""# Quickstart: a Transformer from keras_transformer's layers, in a minute

We build a small encoder–decoder Transformer with the package's layers, teach
it to reverse strings of digits (data the script makes itself, no download),
and decode new strings greedily, one token at a time, with the key/value cache.

    python examples/quickstart.py            # under a minute on 2 CPU cores (41 s of training)
    python examples/quickstart.py --smoke    # a few seconds, for the tests
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keras_transformer import DecoderBlock, EncoderBlock, PositionalEmbedding  # noqa: E402

# ## The data
#
# Token ids: 0 is padding (the layers mask it), 1 starts the target, 2 ends it,
# and the digits 0–9 are ids 3–12. A source like `4 1 7` has the target
# `7 1 4`. The decoder reads `[START] 7 1 4` and must predict `7 1 4 [END]`:
# teacher forcing, the labels are the inputs shifted by one.
PAD, START, END, FIRST_DIGIT = 0, 1, 2, 3
VOCAB_SIZE = FIRST_DIGIT + 10


def make_data(count, max_digits, rng):
    """Sources, decoder inputs and labels, right-padded to fixed widths."""
    source = np.zeros((count, max_digits), "int32")
    decoder_input = np.zeros((count, max_digits + 1), "int32")
    labels = np.zeros((count, max_digits + 1), "int32")
    for row in range(count):
        length = rng.integers(3, max_digits + 1)
        digits = rng.integers(0, 10, size=length) + FIRST_DIGIT
        source[row, :length] = digits
        decoder_input[row, : length + 1] = [START, *digits[::-1]]
        labels[row, : length + 1] = [*digits[::-1], END]
    return source, decoder_input, labels


# ## The model
#
# Embeddings with sinusoidal positions feed an encoder block and a decoder
# block; a dense layer turns the decoder states into logits. The padding masks
# travel implicitly from the embeddings to the blocks (True = real token).
def build_model(embed_dim, num_heads, ffn_dim, max_digits):
    source = keras.Input((None,), dtype="int32", name="source")
    target = keras.Input((None,), dtype="int32", name="target")
    encoder_embedding = PositionalEmbedding(VOCAB_SIZE, max_digits, embed_dim)
    decoder_embedding = PositionalEmbedding(VOCAB_SIZE, max_digits + 1, embed_dim)
    encoder = EncoderBlock(num_heads, ffn_dim, dropout=0.0)
    decoder = DecoderBlock(num_heads, ffn_dim, dropout=0.0)
    to_logits = keras.layers.Dense(VOCAB_SIZE, name="logits")
    memory = encoder(encoder_embedding(source))
    logits = to_logits(decoder(decoder_embedding(target), memory))
    model = keras.Model([source, target], logits)
    parts = (encoder_embedding, encoder, decoder_embedding, decoder, to_logits)
    return model, parts


# ## Greedy decoding with the key/value cache
#
# The encoder runs once. The decoder runs one token per step: its
# self-attention keys/values accumulate in a fixed-size cache, and the
# cross-attention keys/values over the encoder output are computed once.
def greedy_decode(parts, source, max_steps):
    encoder_embedding, encoder, decoder_embedding, decoder, to_logits = parts
    source_mask = ops.not_equal(source, PAD)
    memory = encoder(encoder_embedding(source), padding_mask=source_mask)
    batch = source.shape[0]
    self_cache = decoder.initial_self_attention_cache(batch, max_steps)
    cross_cache = decoder.compute_cross_attention_cache(memory)
    token = np.full((batch, 1), START, "int32")
    generated = []
    for step in range(max_steps):
        x = decoder_embedding(token, start_index=step)
        x, self_cache, _ = decoder(
            x,
            encoder_padding_mask=source_mask,
            self_attention_cache=self_cache,
            self_attention_cache_index=step,
            cross_attention_cache=cross_cache,
        )
        token = ops.convert_to_numpy(ops.argmax(to_logits(x), axis=-1)).astype("int32")
        generated.append(token[:, 0])
    return np.stack(generated, axis=1)


def to_digits(ids):
    """`[7, 1, 4, END, ...]` → `"714"`."""
    text = ""
    for token in ids:
        if token == END or token == PAD:
            break
        text += str(token - FIRST_DIGIT) if token >= FIRST_DIGIT else "?"
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for the tests")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    max_digits = 8
    train_count, epochs = (256, 1) if args.smoke else (12000, 5)
    epochs = args.epochs or epochs

    # ## Training
    #
    # Sparse categorical cross-entropy from logits, with padding (id 0)
    # ignored, and the Adam optimizer: `model.fit` on in-memory arrays.
    source, decoder_input, labels = make_data(train_count, max_digits, rng)
    model, parts = build_model(embed_dim=64, num_heads=4, ffn_dim=128, max_digits=max_digits)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD),
        jit_compile=True,
    )
    started = time.time()
    history = model.fit(
        [source, decoder_input], labels, batch_size=64, epochs=epochs, verbose=2
    )
    seconds = time.time() - started

    # ## What it learned
    test_source, _, _ = make_data(200, max_digits, np.random.default_rng(1))
    decoded = greedy_decode(parts, test_source, max_steps=max_digits + 1)
    sources = [to_digits(row) for row in test_source]
    outputs = [to_digits(row) for row in decoded]
    exact = np.mean([out == src[::-1] for src, out in zip(sources, outputs)])
    print(f"\nTrained {model.count_params():,} parameters for {epochs} epochs in {seconds:.0f} s;")
    print(f"loss {history.history['loss'][0]:.3f} → {history.history['loss'][-1]:.3f}.")
    print(f"Exact-match reversal of 200 new strings (greedy, cached): {exact:.1%}")
    for src, out in list(zip(sources, outputs))[:5]:
        print(f"  {src:>8} → {out}")
    return {"loss": history.history["loss"], "exact_match": float(exact)}


if __name__ == "__main__":
    main()
