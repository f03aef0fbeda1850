"""keras-hub's Transformer blocks with our weights copied in, for value tests."""

import keras_hub


def _copy(pairs):
    for ours, theirs in pairs:
        ours.set_weights(theirs.get_weights())


def hub_encoder_like(ours, inputs):
    """A keras-hub TransformerEncoder with `ours`'s configuration and weights."""
    theirs = keras_hub.layers.TransformerEncoder(
        intermediate_dim=ours.ffn_dim,
        num_heads=ours.num_heads,
        dropout=ours.dropout,
        normalize_first=ours.norm_first,
        layer_norm_epsilon=ours.layer_norm_epsilon,
    )
    theirs(inputs)
    ours(inputs)
    _copy(
        [
            (ours._self_attention, theirs._self_attention_layer),
            (ours._self_attention_norm, theirs._self_attention_layer_norm),
            (ours._feedforward._inner_dense, theirs._feedforward_intermediate_dense),
            (ours._feedforward._output_dense, theirs._feedforward_output_dense),
            (ours._feedforward_norm, theirs._feedforward_layer_norm),
        ]
    )
    return theirs


def hub_decoder_like(ours, decoder_sequence, encoder_sequence=None):
    """A keras-hub TransformerDecoder with `ours`'s configuration and weights."""
    theirs = keras_hub.layers.TransformerDecoder(
        intermediate_dim=ours.ffn_dim,
        num_heads=ours.num_heads,
        dropout=ours.dropout,
        normalize_first=ours.norm_first,
        layer_norm_epsilon=ours.layer_norm_epsilon,
    )
    theirs(decoder_sequence, encoder_sequence)
    ours(decoder_sequence, encoder_sequence)
    pairs = [
        (ours._self_attention, theirs._self_attention_layer),
        (ours._self_attention_norm, theirs._self_attention_layer_norm),
        (ours._feedforward._inner_dense, theirs._feedforward_intermediate_dense),
        (ours._feedforward._output_dense, theirs._feedforward_output_dense),
        (ours._feedforward_norm, theirs._feedforward_layer_norm),
    ]
    if encoder_sequence is not None:
        pairs += [
            (ours._cross_attention, theirs._cross_attention_layer),
            (ours._cross_attention_norm, theirs._cross_attention_layer_norm),
        ]
    _copy(pairs)
    return theirs
