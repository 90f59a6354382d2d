"""Where a train step's time goes, per XLA op: a ``jax.profiler`` trace, summed by what each compiled op computes."""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Any

import jax
import ml_collections

from deconv_jax.experiments.speed import timing, train_steps


def hlo_ops(hlo_text: str) -> dict[str, str]:
  """``{instruction name: what it computes}`` for the entry computation's instructions of a compiled HLO module.

  A fusion is described by its root (or its first convolution / dot): opcode, shape and conv window.
  """
  bodies: dict[str, list[str]] = {}
  current = None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line) if not line.startswith(" ") else None
    if header:
      current = bodies.setdefault(header.group(1), [])
    elif current is not None:
      current.append(line.strip())

  def describe(instruction: str) -> str:
    rest = instruction.split("= ", 1)[1] if "= " in instruction else ""
    shape, rest = _split_shape(rest)
    opcode = re.match(r"\s*([\w\-]+)\(", rest)
    window = re.search(r"window=\{([^}]*)\}", instruction)
    layout_free = re.sub(r"\{[^}]*\}", "", shape)
    text = f"{opcode.group(1) if opcode else '?'} {layout_free}"
    return text + (f" window {window.group(1)}" if window else "")

  ops_: dict[str, str] = {}
  for lines in bodies.values():
    for instruction in lines:
      name = re.match(r"(?:ROOT )?%?([\w.\-]+) = ", instruction)
      if not name:
        continue
      callee = re.search(r"calls=%?([\w.\-]+)", instruction)
      body = bodies.get(callee.group(1), []) if callee else []
      key = [i for i in body if re.search(r" (convolution|dot)\(", i)] or [i for i in body if i.startswith("ROOT")]
      ops_.setdefault(name.group(1), describe(key[0] if key else instruction))
  return ops_


def _split_shape(text: str) -> tuple[str, str]:
  """``"f32[8,3]{1,0} add(...)"`` -> ``("f32[8,3]{1,0}", " add(...)")``; a tuple shape (a fusion with several
  outputs, ``"(f32[32], f32[3,3]) fusion(...)"``) is given without its outer parentheses."""
  if not text.startswith("("):
    shape, _, rest = text.partition(" ")
    return shape, " " + rest
  depth = 0
  for i, char in enumerate(text):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if depth == 0:
      return text[1:i], text[i + 1 :]
  return text, ""


def op_profile_benchmark(
  model: str,
  batch_size: int,
  *,
  path: str = "fast",
  steps: int = 10,
  top: int = 12,
  config: ml_collections.ConfigDict | None = None,
) -> list[dict[str, Any]]:
  """Where one train step's time goes, per XLA op: ``path``'s ``top`` kinds of op by time, from a trace.

  Traces ``steps`` steps with ``jax.profiler`` (a Perfetto trace) and sums the durations of the compiled
  ops that compute the same thing (``what``: opcode, shape, conv window; ``ops`` of them, e.g. one per
  batch chunk), per step. Ops can run at once on several cores, so shares can add up to more than 1;
  ``step_ms`` is the wall time of a step while traced.
  """
  task, config = train_steps.task_and_config(model, config)
  timed = train_steps.StepTimer(task, config, batch_size, plain=path == "plain")
  for _ in range(3):
    metrics = timed.step()
  timed.sync(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    start = time.perf_counter()
    for _ in range(steps):
      metrics = timed.step()
    timed.sync(metrics)
    step_ms = (time.perf_counter() - start) / steps * 1e3
    jax.profiler.stop_trace()
    (path,) = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  described = hlo_ops(timed.step_fn.lower(timed.state, timed.batch, timed.rng).compile().as_text())
  # Ops that compute the same thing (one per batch chunk, say) are summed together.
  totals: dict[str, list] = {}
  for event in trace["traceEvents"] if isinstance(trace, dict) else trace:
    what = described.get(event.get("name"))
    if event.get("ph") == "X" and what is not None:
      entry = totals.setdefault(what, [0.0, set()])
      entry[0] += event.get("dur", 0.0) / 1e3
      entry[1].add(event["name"])
  ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
  return [
    {
      "kind": "op_profile",
      "framework": "project",
      "mode": path,
      "model": model,
      "batch": batch_size,
      "what": what,
      "ops": len(names),
      "ms_per_step": round(ms / steps, 3),
      "share_of_step": round(ms / steps / step_ms, 3),
      "step_ms": round(step_ms, 2),
      **timing.device_record(),
    }
    for what, (ms, names) in ranked
  ]
