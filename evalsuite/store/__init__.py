"""The results store: parquet tables on disk, and the one way to read them.

``records`` (typed rows and Arrow schemas), ``parquet_store`` (files, atomic writes, reading),
``run_views`` (a stored run as a ``RunView``: statuses, "latest", merged shards), ``shards``
(selecting and merging ``--shard I/N`` pieces), ``claims`` (run-id claims, model keys, resume
rules) and ``names`` (run ids and tags are names, never paths). Read side: no model libraries.
"""
