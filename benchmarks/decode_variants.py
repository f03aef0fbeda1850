"""Every kind of model the package decodes, before and after a change, in one run.

`decode_engines.py` measures the translation recipe's model against
CTranslate2; this script checks that a decoding change helps (or at least
does not slow) every other kind of model, and leaves its outputs alone:
the paper's blocks, the recipe's (pre-norm RMSNorm, SwiGLU), a mixture of
experts, grouped-query attention, rotary positions, a decoder-only model
with prompts, and a model that implements the cached-decoding protocol
itself. Each runs under TensorFlow and JAX, greedy and beam 4, through
`IdDecoder`, with the current checkout and with `--before CHECKOUT`, each
in a process of its own, alternating rounds, on the same weights (saved once
and loaded by both) and the same batch.

Weights are random (d=128, 2+2 blocks, vocabulary 2,000, max length 48), so
rows rarely end early: every search runs close to its full length, the case
where a growing cache gains least.

    git worktree add /tmp/before <commit>
    python benchmarks/decode_variants.py --before /tmp/before
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_engines import Process, _use_code  # noqa: E402

VARIANTS = {
    "paper": {},
    "recipe": {"norm_first": True, "norm": "rms", "activation": "swiglu"},
    "moe": {"norm_first": True, "moe": {"num_experts": 4, "top_k": 2}, "moe_every": 1},
    "grouped-query": {"norm_first": True, "num_key_value_heads": 1},
    "rotary": {"norm_first": True, "positions": "rotary"},
    "decoder-only": {"norm_first": True, "norm": "rms", "activation": "swiglu"},
    "protocol": {},
}
SIZES = dict(vocab_size=2000, max_length=48, embed_dim=128, num_heads=4, ffn_dim=512,
             num_encoder_layers=2, num_decoder_layers=2, dropout=0.0)
BATCH, PROMPT = 64, 8


def _build(variant):
    """The variant's model, built (called once) with fresh weights."""
    import numpy as np

    from keras_transformer.models import TransformerConfig, build_causal_lm, build_transformer

    if variant == "protocol":
        return _protocol_model()
    config = TransformerConfig(**SIZES, **VARIANTS[variant])
    if variant == "decoder-only":
        model = build_causal_lm(config)
        model(np.ones((1, 4), "int32"))
    else:
        model = build_transformer(config)
        model([np.ones((1, 4), "int32"), np.ones((1, 4), "int32")])
    return model


def _protocol_model():
    """An encoder–decoder of its own shape (the README's protocol example)."""
    import keras
    import numpy as np
    from keras import ops

    from keras_transformer import DecoderBlock, EncoderBlock, PositionalEmbedding

    class ContextTranslator(keras.Model):
        def __init__(self, vocab, dim, length, **kwargs):
            super().__init__(**kwargs)
            self.source_embedding = PositionalEmbedding(vocab, length, dim)
            self.encoder_block = EncoderBlock(4, 4 * dim, dropout=0.0)
            self.target_embedding = PositionalEmbedding(vocab, length, dim)
            self.decoder_block = DecoderBlock(4, 4 * dim, dropout=0.0)
            self.head = keras.layers.Dense(vocab)

        def call(self, inputs):
            source_ids, target_ids = inputs
            encoded = self.encode(source_ids)
            y = self.target_embedding(target_ids)
            y = self.decoder_block(y, encoded["memory"],
                                   encoder_padding_mask=encoded["source_mask"])
            return self.head(y)

        def encode(self, source_ids):
            mask = ops.not_equal(source_ids, 0)
            memory = self.encoder_block(self.source_embedding(source_ids), padding_mask=mask)
            return {"memory": memory, "source_mask": mask}

        def initial_cache(self, batch_size, max_length, encoded=None):
            block = self.decoder_block
            return {"self": block.initial_self_attention_cache(batch_size, max_length),
                    "cross": block.compute_cross_attention_cache(encoded["memory"]),
                    "source_mask": encoded["source_mask"]}

        def call_with_cache(self, token_ids, cache, index):
            y, self_cache, _ = self.decoder_block(
                self.target_embedding(token_ids, start_index=index),
                decoder_padding_mask=ops.ones_like(token_ids, dtype="bool"),
                encoder_padding_mask=cache["source_mask"], self_attention_cache=cache["self"],
                self_attention_cache_index=index, cross_attention_cache=cache["cross"])
            return self.head(y), {**cache, "self": self_cache}

    model = ContextTranslator(SIZES["vocab_size"], SIZES["embed_dim"], SIZES["max_length"])
    model([np.ones((1, 4), "int32"), np.ones((1, 4), "int32")])
    return model


def _inputs(variant):
    import numpy as np

    rng = np.random.default_rng(1)
    if variant == "decoder-only":
        return rng.integers(4, SIZES["vocab_size"], size=(BATCH, PROMPT)).astype("int32")
    lengths = rng.integers(5, 21, size=BATCH)
    ids = np.zeros((BATCH, 20), "int32")
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(4, SIZES["vocab_size"], size=length)
    return ids


class VariantEngine:
    """`IdDecoder` greedy and beam 4 on one variant, in one backend and checkout."""

    def __init__(self, variant, backend, weights, code):
        self.variant, self.backend, self.weights, self.code = variant, backend, weights, code

    def setup(self):
        os.environ["KERAS_BACKEND"] = self.backend
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        _use_code(self.code)
        from keras_transformer.generation import DecodingConfig, IdDecoder

        model = _build(self.variant)
        model.load_weights(self.weights)
        length = SIZES["max_length"] - 1  # positions filled after position 0
        self.decoders = {"greedy": IdDecoder(model, length),
                         "beam4": IdDecoder(model, length, DecodingConfig("beam", beam_size=4))}
        self.inputs = _inputs(self.variant)

    def run(self, strategy):
        return self.decoders[strategy](self.inputs)[0].tolist()


def _save_weights(variant, directory):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    path = os.path.join(directory, f"{variant}.weights.h5")
    _build(variant).save_weights(path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, metavar="CHECKOUT",
                        help="a checkout of the package before the change")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args(argv)

    directory = tempfile.mkdtemp(prefix="decode_variants_")
    weights = {variant: _save_weights(variant, directory) for variant in args.variants}
    print("| model | backend | search | before, sentences/s | after, sentences/s | after/before "
          "| outputs equal |")
    print("|---|---|---|---|---|---|---|")
    for backend in args.backends:
        for variant in args.variants:
            processes = {label: Process(f"{variant} {backend} {label}",
                                        VariantEngine(variant, backend, weights[variant], code))
                         for label, code in (("before", args.before), ("after", None))}
            for process in processes.values():
                process.wait_ready()
            for strategy in ("greedy", "beam4"):
                outputs = {label: p.run(strategy)[1] for label, p in processes.items()}
                times = {label: [] for label in processes}
                for _ in range(args.rounds):
                    for label, process in processes.items():
                        times[label].append(process.run(strategy)[0])
                rate = {label: BATCH / statistics.median(t) for label, t in times.items()}
                equal = sum(a == b for a, b in zip(outputs["before"], outputs["after"]))
                print(f"| {variant} | {backend} | {strategy} | {rate['before']:,.0f} "
                      f"| {rate['after']:,.0f} | {rate['after'] / rate['before']:.2f}× "
                      f"| {equal}/{BATCH} |", flush=True)
            for process in processes.values():
                process.close()


if __name__ == "__main__":
    sys.exit(main())
