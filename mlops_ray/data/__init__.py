"""The data plane: ingest -> validate -> featurize, on Ray Data.

In: ``DataConfig``/``SchemaConfig``/``FeaturesConfig`` and the source files. Out: a ``Source``
(files, schema, fingerprint; ``ingest``), a ``ValidationReport`` (``validate``, ``checks``), a
fitted ``FeatureSpec`` and the featurized splits (``features``), and the same transform row by row
for serving (``rows``). ``dates`` reads dates written as text; ``profile`` runs partial functions
over a dataset in one pass (Ray Data, or in-process); ``synth`` writes the demo's data.
"""
