"""Recipes: complete, reproducible ways to produce a model, built on the ``training`` library.

``default_model`` is the recipe of the model that ships inside the serving package; ``sweep``
compares its variants on the validation split; ``learning_curve`` retrains it on fractions of the
training bins.
"""
