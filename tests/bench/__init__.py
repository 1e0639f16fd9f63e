"""Side-by-side benchmark of replicad against rsync and raw I/O floors (``python -m tests.bench.bench``)."""
