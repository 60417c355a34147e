"""The fast paths: the function of the reference forward (model.py), computed from tables per
token kind or per position instead of products per token. Each is a mixin of `Model` and names
the tests that hold it to the reference."""
