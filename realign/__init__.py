"""realign: gated LLM realignment workflows on Apple MLX.

This package is the pure core: configs, data formats, MLX models, training,
metrics and the CLI. It never imports prefect or great_expectations.
"""

from realign._blas import load_fast_blas

# Must run before anything imports mlx.core (see realign/_blas.py).
load_fast_blas()

__version__ = "0.1.0"
