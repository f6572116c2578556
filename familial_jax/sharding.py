"""Device mesh, logical-axis rules and shardings: the only module naming mesh axes.

Mesh axes: ("data", "fsdp", "tensor").
- "data": pure data parallelism (batch split, parameters replicated).
- "fsdp": batch split and parameters sharded along their "embed" dimension
  (ZeRO-3 style; XLA gathers them for each matmul).
- "tensor": Megatron-style model parallelism over heads, MLP and vocabulary.

Model code names logical axes only; `RULES` maps them to mesh axes.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
)


def maybe_initialize_distributed(enabled: bool, **kwargs) -> None:
  """Calls `jax.distributed.initialize(**kwargs)` for multi-host runs.

  On TPU pods and SLURM/GKE clusters no arguments are needed; on other
  machines pass coordinator_address, num_processes and process_id.
  """
  if enabled:
    jax.distributed.initialize(**kwargs)


def progress(line: str) -> None:
  """Prints a progress line, on process 0 only of a `jax.distributed` run:
  on a pod every host runs the same loop, and each line would otherwise
  appear once per host. A single process is not asked for its index, which
  would start JAX's backends (a dry run started beside a GPU sweep would
  take most of the GPU's memory)."""
  if not jax.distributed.is_initialized() or jax.process_index() == 0:
    print(line, flush=True)


def make_mesh(shape: Sequence[int], devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one entry may be -1 (all remaining devices).

  Raises:
    ValueError: the shape needs more devices than there are.
  """
  devices = jax.devices() if devices is None else devices
  shape = list(shape)
  if len(shape) != 3 or any((not isinstance(s, int)) or s == 0 or s < -1
                            for s in shape) or shape.count(-1) > 1:
    raise ValueError(f"mesh shape must be 3 positive ints (data, fsdp, tensor)"
                     f", at most one -1; got {tuple(shape)}.")
  if -1 in shape:
    rest = int(np.prod([s for s in shape if s != -1]))
    if len(devices) % rest:
      raise ValueError(f"{len(devices)} devices cannot fill mesh {shape}.")
    shape[shape.index(-1)] = len(devices) // rest
  needed = int(np.prod(shape))
  if needed > len(devices) or (jax.process_count() > 1 and
                               needed != len(devices)):
    raise ValueError(
        f"mesh shape {tuple(shape)} needs {needed} devices but "
        f"{len(devices)} are available; make data * fsdp * tensor at most "
        f"{len(devices)} (equal on multi-host runs), or use -1 for one axis.")
  # A smaller mesh on one host takes the first devices (e.g. (1, 1, 1)).
  return Mesh(np.asarray(devices[:needed]).reshape(shape), AXES)


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def logical_sharding(mesh: Mesh, boxed_tree: Any) -> Any:
  """NamedShardings for a tree of `nn.LogicallyPartitioned` boxes (or specs)."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches [B, T] split over data and fsdp."""
  return NamedSharding(mesh, P(("data", "fsdp"), None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
  """Assembles a global [B, T] array from this process's rows."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local)
