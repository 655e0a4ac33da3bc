"""Test equipment shipped with the package, for pgingest's own tests, benchmarks and chaos run
and for an application's tests: ``fake_provider`` (an OpenAI-compatible embedding server on
127.0.0.1 that can be told to fail; ``python -m pgingest.testing.fake_provider``) and ``texts``
(deterministic synthetic documents).

Nothing in the pipeline's runtime imports this package.
"""
