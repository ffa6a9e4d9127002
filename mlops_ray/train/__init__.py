"""Training: the search and the model.

In: the featurized splits and the ``FeatureSpec``, the ``model`` and ``tune`` config. Out: a
``SearchResult`` and the final booster (``tune``: Ray Tune + Optuna + ASHA; ``xgb``: one XGBoost
model, native or data-parallel), its evaluation and the gate's verdict (``evaluate``, ``score``),
progress lines and plots (``progress``, ``plots``).
"""
