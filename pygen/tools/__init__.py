"""The tooling behind the CLI: ``harness`` (``pygen bench`` and the pytest-benchmark view over the same
definitions in bench/), ``inspect`` (``pygen inspect``: offline sm_90 compiles of every kernel) and
``profile`` (``pygen profile``: a model with and without pygen's ops)."""
