"""Seeded fuzzing of GGUF files through the whole pipeline, and leaks over repeated failures.

Every corrupted variant of a small, complete model (header, metadata, tensor infos, data,
truncation, bit flips; see ``gguf_fuzz.py``) must either run or raise an ``MlplugError``, within
seconds and without a large allocation. The child process runs under a 3 GiB address-space limit,
so sizing something by a lying count fails there instead of exhausting the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("mlplug_cpu")

HERE = Path(__file__).resolve().parent
SEED = 20261203
VARIANTS = 300
SECONDS_PER_VARIANT = 5.0
PEAK_RSS = 1 << 30


def test_every_corruption_is_run_or_refused_with_an_mlplug_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(HERE / "gguf_fuzz.py"), str(SEED), str(VARIANTS), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 0 and len(lines) == VARIANTS + 1, out.stderr[-3000:]
    assert lines[0] == {"base": "ran 2 tokens"}  # the uncorrupted model runs
    rows = lines[1:]
    bad = [f"{r['what']} => {r['outcome']}" for r in rows if not r["ok"]]
    assert bad == []
    slow = [(r["s"], r["what"]) for r in rows if r["s"] > SECONDS_PER_VARIANT]
    assert slow == []
    assert max(r["rss"] for r in rows) < PEAK_RSS
    # The variants reach every stage: refused by the reader, by the model, and run through.
    outcomes = Counter(r["outcome"].split(":")[0] for r in rows)
    assert outcomes["GGUFError"] > 50 and outcomes["ModelFileError"] > 10
    assert outcomes["ran 2 tokens"] > 50


_LEAK = """
import gc, os, resource, shutil, sys
import mlplug
from mlplug_conformance import synth

folder = sys.argv[1]
good = synth.write_llama_gguf(
    os.path.join(folder, "good.gguf"), n_layers=2, n_embd=64, n_head=4, n_head_kv=2,
    n_ff=96, n_vocab=40,
)
bad = os.path.join(folder, "bad.gguf")
shutil.copy(good, bad)
synth.set_tensor_type(bad, "blk.1.attn_q.weight", 200)
short = os.path.join(folder, "short.gguf")


def fail_once(i):
    kind = i % 3
    try:
        if kind == 0:  # a corrupt file
            mlplug.new_backend(bad, mlplug.BackendParams(), backend="cpu")
        elif kind == 1:  # weights that do not fit (MLPLUG_CPU_MEMORY_LIMIT below)
            mlplug.new_backend(good, mlplug.BackendParams(), backend="cpu")
        else:  # a file truncated between construction and load
            shutil.copy(good, short)
            backend = mlplug.new_backend(short, mlplug.BackendParams(), backend="cpu")
            os.truncate(short, 8192)
            try:
                backend.load()
            finally:
                backend.close()
    except (mlplug.GGUFError, mlplug.ErrNoMem):
        return
    raise AssertionError(f"variant {kind} did not fail")


def state():
    rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return rss, len(os.listdir("/proc/self/fd"))


for i in range(30):  # warm up: imports, caches, first allocations
    fail_once(i)
gc.collect()
before = state()
for i in range(300):
    fail_once(i)
gc.collect()
after = state()
print(before[0], after[0], before[1], after[1])
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_rss_and_descriptors_stay_flat_over_failed_loads(tmp_path: Path) -> None:
    env = {**__import__("os").environ, "MLPLUG_CPU_MEMORY_LIMIT": "65536"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_LEAK), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rss_before, rss_after, fds_before, fds_after = map(int, out.stdout.split())
    assert fds_after == fds_before
    assert rss_after - rss_before < 8 << 20, (rss_before, rss_after)
