"""Where everything is kept: below data, training, serving and monitoring, which all read it.

``fs`` resolves paths and URIs (local, s3://, gs://) to pyarrow filesystems; ``store`` is the
store's root with atomic JSON writes; ``catalog`` names every location in it; ``state`` is the
serving-state and serving-head records, readable without importing ``serve``; ``procs`` tells
whether the process a record names still runs.
"""
