"""The data plane: ingest -> validate -> featurize, on Ray Data."""
