"""familial_jax: familial (early-exit) language models and their scaling laws."""

from familial_jax.config import ModelConfig, uniform_exits
from familial_jax.model import FamilialLM, extract_submodel, init_params

# 0.2.0: a new training-data order (one permutation per epoch, gathered a
# batch at a time); runs of 0.1.0 are reproduced by 0.1.0.
__version__ = "0.2.0"
