"""Several processes writing one results directory at once."""

import multiprocessing as mp
import os

from familial_jax.results import ResultsStore, atomic_write
from tests.faults.helpers import TALLY

RECORD = {"exit_losses": [2.5, 2.4], "N": 100, "N_g": [50, 100], "D": 1000,
          "C": 6e5, "G": 2, "budget": 6e5, "seed": 0, "versions": {},
          "corpus": {"sha256": "x"}}


def _writer(workdir, worker, rounds):
  store = ResultsStore(workdir)
  for i in range(rounds):
    # Shared ids (every worker writes them) and own ids.
    for pid in (f"shared{i % 5}", f"w{worker}-{i}"):
      store.write(dict(RECORD, point_id=pid, writer=worker, round=i,
                       padding="x" * (1000 * (i % 7))))
    atomic_write(os.path.join(workdir, "results.csv"),
                 f"writer,round\n{worker},{i}\n" * (1 + i % 50))


def _reader(workdir, stop, bad):
  store = ResultsStore(workdir)
  while not stop.is_set():
    if not os.path.isdir(store.dir):
      continue
    for name in os.listdir(store.dir):
      if name.endswith(".json") and store.read(name[:-5]) is None:
        bad.value += 1
    csv = os.path.join(workdir, "results.csv")
    if os.path.exists(csv):
      lines = open(csv).read().splitlines()
      if not lines or lines[0] != "writer,round":
        bad.value += 1


def test_concurrent_writers_never_clobber(tmp_path):
  workdir = str(tmp_path)
  ctx = mp.get_context("spawn")
  stop, bad = ctx.Event(), ctx.Value("i", 0)
  reader = ctx.Process(target=_reader, args=(workdir, stop, bad))
  reader.start()
  writers = [ctx.Process(target=_writer, args=(workdir, w, 40))
             for w in range(4)]
  for p in writers:
    p.start()
  for p in writers:
    p.join(timeout=300)
    assert p.exitcode == 0
  stop.set()
  reader.join(timeout=60)
  assert bad.value == 0, f"{bad.value} partial files seen while writing"
  store = ResultsStore(workdir)
  ids = sorted(n[:-5] for n in os.listdir(store.dir) if n.endswith(".json"))
  assert len(ids) == 5 + 4 * 40
  for pid in ids:
    record = store.read(pid)
    assert record is not None and record["point_id"] == pid
    TALLY["records_checked"] += 1
  # No temporary file is left behind by writers that finished.
  assert not [n for n in os.listdir(store.dir) if ".tmp." in n]
  # A shared record is one writer's whole record, never a mix of two.
  for i in range(5):
    record = store.read(f"shared{i}")
    assert record["padding"] == "x" * (1000 * (record["round"] % 7))
