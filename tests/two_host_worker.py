"""One of two localhost processes (4 CPU devices each), the hosts of a pod,
running tests/test_sweep.py's one-point sweep on a (2, 2, 2) mesh.

Run by tests/test_sweep.py::test_two_hosts_agree_on_a_notice_one_of_them_got.
Usage: python two_host_worker.py PROCESS_ID PORT WORKDIR [SIGTERM_AT]
With SIGTERM_AT = s, this process sends itself SIGTERM once step s is logged
(the other process gets none: a notice that reaches one host of a pod).
Progress goes through sharding.progress (process 0 prints it); then OUT and
sweep.run's result as JSON.
"""

import json
import os
import signal
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main():
  pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                             num_processes=2, process_id=pid)
  assert jax.process_count() == 2 and len(jax.devices()) == 8
  from familial_jax import sharding, sweep  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(__file__))
  from test_sweep import two_host_sweep  # pylint: disable=g-import-not-at-top
  at = f" step {sys.argv[4]}/" if len(sys.argv) > 4 else None

  def log(line):
    sharding.progress(line)  # process 0 prints, as the binaries do
    if at and at in line:
      os.kill(os.getpid(), signal.SIGTERM)

  out = sweep.run(two_host_sweep((2, 2, 2)), workdir, fit=False, log=log)
  print("OUT", json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
