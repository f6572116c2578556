"""Fault injection for the reliability tests (tests/faults/).

Setting the environment variable FAMILIAL_JAX_FAULT to "site:n" (or several,
comma-separated) makes this process kill itself with SIGKILL, as a preempted
or crashed machine would, the n-th time (1-based) it reaches `site`:

  step        after a training step has been dispatched
  checkpoint  inside a checkpoint save: orbax has started writing, not finished
  result      inside `results.atomic_write`: half of the temporary file written
  record      after a sweep point finished training, before its record exists

Unset (the normal case), `reach` is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal

ENV = "FAMILIAL_JAX_FAULT"
SITES = ("step", "checkpoint", "result", "record")
_counts: dict[str, int] = {}


def _plan() -> dict[str, int]:
  spec = os.environ.get(ENV, "")
  plan = {}
  for item in filter(None, (s.strip() for s in spec.split(","))):
    site, _, n = item.partition(":")
    if site not in SITES or not n.isdigit() or int(n) < 1:
      raise ValueError(f"{ENV}={spec!r}: each item must be 'site:n' with site "
                       f"in {SITES} and n >= 1.")
    plan[site] = int(n)
  return plan


def reach(site: str) -> None:
  """Counts a visit to `site`; SIGKILLs the process on the planned visit."""
  if ENV not in os.environ:
    return
  _counts[site] = _counts.get(site, 0) + 1
  if _plan().get(site) == _counts[site]:
    os.kill(os.getpid(), signal.SIGKILL)
