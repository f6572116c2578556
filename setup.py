"""familial_jax: familial (early-exit) language models and their scaling laws."""

import re
from pathlib import Path

from setuptools import find_packages, setup

_HERE = Path(__file__).parent
_VERSION = re.search(r'__version__ = "([^"]+)"',
                     (_HERE / "familial_jax" / "__init__.py").read_text())[1]

setup(
    name="familial_jax",
    version=_VERSION,
    description=("Familial (early-exit) Transformers in JAX/Flax and the "
                 "L(N, D, G) scaling law of granularity"),
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["familial_jax", "familial_jax.*"]),
    python_requires=">=3.11,<3.13",
    install_requires=[
        "jax>=0.7.0,<0.11",
        "flax>=0.11.0,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11.0,<0.13",
        "grain>=0.2.12,<0.3",
        "tensorflow-datasets>=4.9.8,<5",
        "jaxopt>=0.8.3,<0.9",
        "numpy>=1.26,<3",
        "absl-py>=2.1,<3",
        "ml-collections>=1.0,<2",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3", "scipy>=1.11", "hypothesis>=6"],
        "cuda": ["jax[cuda12]>=0.7.0,<0.11"],
        "tpu": ["jax[tpu]>=0.7.0,<0.11"],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "License :: OSI Approved :: Apache Software License",
    ],
)
