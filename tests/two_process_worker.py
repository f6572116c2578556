"""One of two localhost processes (4 CPU devices each) training SMALL.

Run by tests/test_train.py::test_two_process_run_matches_one_device.
Usage: python two_process_worker.py PROCESS_ID PORT WORKDIR
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main():
  pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                             num_processes=2, process_id=pid)
  assert jax.process_count() == 2 and len(jax.devices()) == 8
  import dataclasses  # pylint: disable=g-import-not-at-top
  from familial_jax import train
  sys.path.insert(0, os.path.dirname(__file__))
  from test_train import SMALL
  cfg = dataclasses.replace(SMALL, mesh_shape=(2, 2, 2))
  record = train.run(cfg, workdir, log=lambda s: None)
  losses = [h["exit_losses"] for h in record["train_history"]]
  print("RESULT", json.dumps(losses + [record["exit_losses"]]), flush=True)


if __name__ == "__main__":
  main()
