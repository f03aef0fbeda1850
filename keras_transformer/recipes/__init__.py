"""End-to-end recipes: each module trains one kind of model from text.

`translation` (encoder–decoder) and `char_lm` (decoder-only). They are what
`keras-transformer train ...` runs and what the scripts in `examples/` walk
through; each reads top to bottom as a literate script.
"""
