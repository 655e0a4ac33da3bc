"""The demo kit: the demo corpus (``corpus``) and ``pgingest demo`` (``run``).

Not part of the pipeline's runtime: nothing outside this folder imports it but the CLI's
``demo`` command, the benchmarks and the tests.
"""
