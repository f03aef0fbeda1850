"""Fine-tuning an imported model: `fit` on documents framed with its special ids,
LoRA (`enable_lora`: only the low-rank updates train), int8 quantization, and
the result decoding and exporting like any model of the package."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer.data.pipelines import causal_lm_dataset
from keras_transformer.export import export_saved_model
from keras_transformer.generation import DecodingConfig, TextGenerator
from keras_transformer.models import enable_lora, from_keras_hub
from keras_transformer.training import MaskedSparseCategoricalCrossentropy
from tests.helpers import gpt2_tokenizer, small_gpt2

TEXTS = ["ab cd ef", "gh ij kl", "ab ab cd", "ef gh ij"] * 4


def imported():
    tokenizer = gpt2_tokenizer()
    return from_keras_hub(small_gpt2(), tokenizer=tokenizer), tokenizer


def fit(model, tokenizer, learning_rate, epochs=8):
    special = model.special_ids
    data = causal_lm_dataset(TEXTS, tokenizer, 10, batch_size=8, special_ids=special)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=MaskedSparseCategoricalCrossentropy(pad_id=special.label_padding))
    return model.fit(data, epochs=epochs, verbose=0, shuffle=False).history["loss"]


def served_text(generator, tmp_path, prompts):
    path = export_saved_model(generator, str(tmp_path / "generator"))
    served = tf.saved_model.load(path).signatures["serving_default"]
    return served(prompt=tf.constant(prompts))["text"].numpy().tolist()


def test_documents_are_framed_with_the_models_special_ids():
    model, tokenizer = imported()
    inputs, labels = next(iter(causal_lm_dataset(["ab cd"], tokenizer, 6,
                                                 special_ids=model.special_ids)))
    ids = np.asarray(tokenizer("ab cd")).tolist()
    end = 49  # GPT-2's <|endoftext|>: starts, ends and pads
    np.testing.assert_array_equal(inputs.numpy()[0], [end, *ids, end, end, end][:6])
    # The end is learned; the padding after it (-1) is not.
    np.testing.assert_array_equal(labels.numpy()[0], [*ids, end, -1, -1, -1][:6])


def test_an_imported_model_fine_tunes_with_fit():
    model, tokenizer = imported()
    losses = fit(model, tokenizer, 1e-2)
    assert losses[-1] < 0.7 * losses[0], losses


def test_lora_trains_the_low_rank_updates_only_and_exports(tmp_path):
    model, tokenizer = imported()
    layers = enable_lora(model, rank=2)
    assert sorted({layer.name for layer in layers}) == ["query", "value"]
    assert len(layers) == 4  # two blocks, query and value
    trainable = {v.path for v in model.trainable_weights}
    assert trainable and all("query" in p or "value" in p for p in trainable)
    frozen = {v.path: v.numpy().copy() for v in model.weights if v.path not in trainable}
    losses = fit(model, tokenizer, 0.1, epochs=12)
    # Attention's query/value updates alone move a tiny random model slowly
    # (3.88 → 3.83 nats here), but steadily.
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.03, losses
    for variable in model.weights:
        if variable.path in frozen:
            np.testing.assert_array_equal(variable.numpy(), frozen[variable.path],
                                          err_msg=variable.path)
    assert any("lora_kernel_b" in p and np.abs(v.numpy()).max() > 0
               for p, v in ((w.path, w) for w in model.trainable_weights))
    generator = TextGenerator(model, tokenizer, max_length=10,
                              decoding=DecodingConfig("greedy"))
    prompts = ["ab", "gh ij"]
    in_process = generator.generate_text(tf.constant(prompts))["text"].numpy().tolist()
    assert served_text(generator, tmp_path, prompts) == in_process
    with pytest.raises(ValueError, match=r"named one of \['nothing'\]"):
        enable_lora(imported()[0], 2, target_layer_names=("nothing",))


def test_an_int8_imported_model_decodes_and_exports(tmp_path):
    model, tokenizer = imported()
    prompts = ["ab cd", "ef"]
    reference = TextGenerator(model, tokenizer, max_length=10,
                              decoding=DecodingConfig("greedy"))
    float_ids = reference.generate_text(tf.constant(prompts))["token_ids"].numpy()
    model.quantize("int8")
    assert any("int8" in str(v.dtype) for v in model.weights)
    generator = TextGenerator(model, tokenizer, max_length=10,
                              decoding=DecodingConfig("greedy"))
    out = generator.generate_text(tf.constant(prompts))
    # int8 weights: the first generated tokens agree with float32's.
    first = [len(tokenizer(p)) + 1 for p in prompts]
    assert [out["token_ids"].numpy()[i, first[i] - 1] for i in range(2)] == \
        [float_ids[i, first[i] - 1] for i in range(2)]
    assert served_text(generator, tmp_path, prompts) == out["text"].numpy().tolist()
