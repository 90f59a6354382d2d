"""The speed experiment runs and reports well-formed numbers (tiny settings: this checks plumbing, not speed)."""

import json
import math
import os
import re
import subprocess
import sys

import jax
import pytest

from deconv_jax import config as config_lib
from deconv_jax import models, xla_cpu
from deconv_jax.experiments.speed import op_profile, primitives, timing, train_steps

PLATFORM_KEYS = {"backend", "devices"}
PEERS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "bench", "peers")


def assert_positive_finite(record, keys):
  for key in keys:
    value = record[key]
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
    assert math.isfinite(value) and value > 0, (key, value)


PEERS_FIELDS = {"kind", "framework", "mode", "model", "batch", "ips_all", "ips_median", "ips_min", "ips_max"}
PEERS_FIELDS |= {"first_step_s", "second_step_s", "steps_per_repeat", "repeat_s", "step_ms_median", "date_utc"}
PEERS_FIELDS |= {"train_flops_per_image", "achieved_gflops", "versions", "python", "cpu"}


@pytest.mark.slow
def test_train_step_records_follow_the_peers_protocol():
  records = train_steps.train_step_benchmark("seedcnn", 8, repeats=2, target_s=0.01)  # the default CNN with Adam
  assert [(r["framework"], r["mode"], r["model"], r["batch"]) for r in records] == [
    ("project", "fast", "seedcnn", 8),
    ("project", "plain", "seedcnn", 8),
  ]
  for record in records:
    assert record.keys() >= PEERS_FIELDS
    assert record["kind"] == "train_step" and len(record["ips_all"]) == record["repeats"] == 2
    assert_positive_finite(record, ["ips_median", "first_step_s", "achieved_gflops", "devices"])
    assert record["ips_min"] <= record["ips_median"] <= record["ips_max"]
    assert record["ips_all"][0] == pytest.approx(
      record["steps_per_repeat"] * 8 / record["repeat_s"][0], rel=0.02
    )  # repeat_s is rounded
    assert record["train_flops_per_image"] == 18955008  # the peers' count (common.py) for their classifier
    assert isinstance(record["backend"], str) and record["backend"]


def test_peers_dense_flop_counts_match_the_peers_arithmetic():
  # ../shared/bench/peers/common.py: seedcnn 3 x forward; DCGAN 3 G + 8 D passes per batch element.
  assert train_steps.peers_flops("seedcnn", config_lib.base()) == 18955008
  assert train_steps.peers_flops("gan", config_lib.base()) == 149574656
  assert train_steps.peers_flops("configs/gan.py", config_lib.base()) is None


@pytest.mark.slow
def test_summarize_tables_project_records_beside_the_peers(tmp_path):
  summarize = os.path.join(PEERS_DIR, "summarize.py")
  if not os.path.exists(summarize):
    pytest.skip(f"the peers benchmark is not at {PEERS_DIR}")
  records = train_steps.train_step_benchmark("gan", 4, repeats=1, target_s=0.01, paths=["fast"])
  path = tmp_path / "project.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  result = subprocess.run([sys.executable, summarize, str(path)], capture_output=True, text=True, cwd=PEERS_DIR)
  assert result.returncode == 0, result.stderr
  assert re.search(r"\| project \| fast \| gan \| 4 \|", result.stdout), result.stdout


def test_deconv_kernel_grad_benchmark_record():
  record = primitives.deconv_kernel_grad_benchmark(
    batch=2, in_hw=(3, 3), in_channels=4, out_channels=2, calls=2, repeats=1
  )
  assert record["benchmark"] == "deconv_kernel_grad"
  assert record["output_shape"] == [2, 6, 6, 2]
  assert record["kernel_shape"] == [4, 4, 2, 4]
  assert_positive_finite(record, ["lax_conv_transpose_ms", "ops_deconv2d_ms", "ratio", "devices"])
  assert record["ratio"] == pytest.approx(record["lax_conv_transpose_ms"] / record["ops_deconv2d_ms"])
  assert record["max_rel_diff"] <= 1e-4
  assert record.keys() >= PLATFORM_KEYS


def test_conv_library_benchmark_record():
  record = primitives.conv_library_benchmark((2, 6, 6, 3), (3, 3, 3, 4), 2, "SAME", calls=2, repeats=1)
  assert record["benchmark"] == "conv_library"
  assert record["input_shape"] == [2, 6, 6, 3] and record["kernel_shape"] == [3, 3, 3, 4]
  assert_positive_finite(record, ["xla_default_ms", "compiler_options_ms", "ratio"])
  assert record["ratio"] == pytest.approx(record["xla_default_ms"] / record["compiler_options_ms"])
  assert record["options"] == xla_cpu.compiler_options(jax.default_backend())
  assert record["max_rel_diff"] <= 1e-4
  assert record.keys() >= PLATFORM_KEYS


def test_max_pool_grad_benchmark_record():
  record = primitives.max_pool_grad_benchmark(shape=(2, 6, 6, 3), calls=2, repeats=1)
  assert record["benchmark"] == "max_pool_grad"
  assert_positive_finite(
    record, ["reduce_window_ms", "ops_max_pool_ms", "reshape_max_even_split_ms", "ratio", "ratio_vs_even_split"]
  )
  assert record["ratio_vs_even_split"] == pytest.approx(record["reshape_max_even_split_ms"] / record["ops_max_pool_ms"])
  assert record["max_rel_diff"] <= 1e-4
  assert record.keys() >= PLATFORM_KEYS


def test_attribute_with_rule_benchmark_record():
  model = models.CNN(features=(4,), dense=(8,), num_classes=3)
  record = primitives.attribute_with_rule_benchmark(batch=2, model=model, calls=2, repeats=1)
  assert record["benchmark"] == "attribute_with_rule" and record["method"] == "guided_backprop"
  assert record["input_shape"] == [2, 28, 28, 1]
  assert_positive_finite(record, ["field_swap_ms", "with_rule_ms", "ratio"])
  assert record["ratio"] == pytest.approx(record["field_swap_ms"] / record["with_rule_ms"])
  assert record["max_rel_diff"] <= 1e-4
  assert record.keys() >= PLATFORM_KEYS


@pytest.mark.parametrize("wrt", ["kernel", "input"])
def test_deconv3d_grad_benchmark_record(wrt):
  record = primitives.deconv3d_grad_benchmark(
    wrt, batch=1, in_size=(2, 3, 2), in_channels=3, out_channels=2, kernel_size=3, calls=2, repeats=1
  )
  assert record["benchmark"] == f"deconv3d_{wrt}_grad"
  assert record["input_shape"] == [1, 2, 3, 2, 3]
  assert record["output_shape"] == [1, 4, 6, 4, 2]
  assert record["kernel_shape"] == [3, 3, 3, 2, 3]
  assert_positive_finite(record, ["lax_conv_transpose_ms", "ops_deconv_ms", "ratio", "devices"])
  assert record["ratio"] == pytest.approx(record["lax_conv_transpose_ms"] / record["ops_deconv_ms"])
  assert record["max_rel_diff"] <= 1e-4
  assert record.keys() >= PLATFORM_KEYS


def test_interleaved_samples_alternate():
  calls = []
  samples = timing.interleaved_ms([lambda: calls.append("a"), lambda: calls.append("b")], repeats=2, calls=1)
  assert calls == ["a", "b", "a", "b", "a", "b"]  # warm-up, then A, B, A, B
  assert [len(s) for s in samples] == [2, 2]


def test_check_same_rejects_different_gradients():
  with pytest.raises(RuntimeError, match="disagree"):
    timing.check_same("x", [1.0, 2.0], [1.0, 2.5])


@pytest.mark.slow
def test_cli_prints_only_json_lines(cli):
  result = cli("deconv_jax.experiments.speed", "--only=max_pool_grad", "--repeats=1", "--steps=1", timeout=120)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  records = [json.loads(line) for line in lines]
  assert [r["benchmark"] for r in records] == ["max_pool_grad"]
  assert_positive_finite(records[0], ["reduce_window_ms", "ops_max_pool_ms", "ratio"])


@pytest.mark.parametrize("flag", ["--only=nope", "--batch_sizes=0", "--train_models=resnet", "--paths=fastest"])
def test_cli_bad_flag_is_one_line_error(cli, flag):
  result = cli("deconv_jax.experiments.speed", flag, timeout=120)
  assert result.returncode != 0
  assert result.stdout == ""
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr


def test_hlo_ops_describe_fusions_by_their_convolution_or_root_even_with_several_outputs():
  hlo = """HloModule step

%fused_conv (p0: f32[8,28,28,1], p1: f32[3,3,1,32]) -> f32[8,26,26,32] {
  %p0 = f32[8,28,28,1]{3,2,1,0} parameter(0)
  %p1 = f32[3,3,1,32]{3,2,1,0} parameter(1)
  ROOT %convolution.1 = f32[8,26,26,32]{3,2,1,0} convolution(%p0, %p1), window={size=3x3}, dim_labels=b01f_01io->b01f
}

%fused_two (p0: f32[32], p1: f32[3,3]) -> (f32[32], f32[3,3]) {
  %p0 = f32[32]{0} parameter(0)
  %p1 = f32[3,3]{1,0} parameter(1)
  ROOT %tuple = (f32[32]{0}, f32[3,3]{1,0}) tuple(%p0, %p1)
}

ENTRY %main (x: f32[8,28,28,1], k: f32[3,3,1,32]) -> f32[8,26,26,32] {
  %x = f32[8,28,28,1]{3,2,1,0} parameter(0)
  %k = f32[3,3,1,32]{3,2,1,0} parameter(1)
  %fusion.2 = (f32[32]{0}, f32[3,3]{1,0}) fusion(%x, %k), kind=kLoop, calls=%fused_two
  ROOT %fusion.1 = f32[8,26,26,32]{3,2,1,0} fusion(%x, %k), kind=kOutput, calls=%fused_conv
}
"""
  described = op_profile.hlo_ops(hlo)
  assert described["fusion.1"] == "convolution f32[8,26,26,32] window size=3x3"
  assert described["fusion.2"] == "tuple f32[32], f32[3,3]"
  assert described["x"] == "parameter f32[8,28,28,1]"


@pytest.mark.slow
def test_op_profile_names_what_each_op_computes():
  # The top 12: at batch 8 which ops lead differs by XLA version (jaxlib 0.7.2 spends longest on a reduction).
  records = op_profile.op_profile_benchmark("seedcnn", 8, steps=2, top=12)
  assert 1 <= len(records) <= 12
  times = [r["ms_per_step"] for r in records]
  assert times == sorted(times, reverse=True) and times[0] > 0
  for r in records:
    assert r["kind"] == "op_profile" and r["model"] == "seedcnn" and r["batch"] == 8 and r["ops"] >= 1
    assert re.match(r"[\w\-]+ [a-z0-9]+\[[\d,]*\]", r["what"]), r["what"]  # opcode and shape
  assert any(r["what"].startswith(("dot ", "convolution ")) for r in records)
