r"""Measures a finished sweep's models again on another validation set.

  python experiments/reevaluate.py --workdir=runs/tiny_cpu \
      --output=runs/tiny_cpu_all_windows [--eval_windows=0] [--eval_sample=spread]
  python experiments/fit_law.py --input=runs/tiny_cpu_all_windows

Loads each recorded point's final checkpoint (workdir/runs/<point id>),
measures every exit on the chosen windows of the held-out stream (default:
all of them) and writes the records, results.csv and plan.json to --output,
so that fit_law.py fits the same models measured on other text. Rerunning
skips the points already measured; nothing is trained.
"""

from absl import app
from absl import flags
from absl import logging

from familial_jax import reevaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "A sweep's workdir, with its "
                               "runs/<point id>/checkpoints.")
_OUTPUT = flags.DEFINE_string("output", None, "Where the new records go.")
_WINDOWS = flags.DEFINE_integer(
    "eval_windows", 0, "Held-out windows to measure on (0: all).",
    lower_bound=0)
_SAMPLE = flags.DEFINE_enum("eval_sample", "spread", ["spread", "first"],
                            "Which windows: spread evenly or the first ones.")
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    path = reevaluate.reevaluate_sweep(
        _WORKDIR.value, _OUTPUT.value, eval_windows=_WINDOWS.value,
        eval_sample=_SAMPLE.value, log=lambda s: print(s, flush=True))
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  print(f"wrote {path}; fit it with experiments/fit_law.py "
        f"--input={_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
