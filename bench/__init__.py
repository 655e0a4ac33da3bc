"""pgingest benchmarks: ``python -m bench.run`` (make bench) and ``python bench/peers.py``
(make bench-peers). See bench/README.md."""
