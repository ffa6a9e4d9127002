"""What the tests share: configs and real bundles to test with (``configs``), CI's rule for missing
components (``ci``), a multi-node cluster on this host (``cluster``), processes and ports
(``procs``), HTTP load (``http_load``) and the foreign data sets (``foreign_data``)."""
