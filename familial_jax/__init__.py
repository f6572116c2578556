"""familial_jax: familial (early-exit) language models and their scaling laws."""

from familial_jax.config import ModelConfig, uniform_exits
from familial_jax.model import FamilialLM, extract_submodel, init_params

__version__ = "0.1.0"
