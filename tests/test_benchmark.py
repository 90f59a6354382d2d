"""The benchmark command runs and reports well-formed numbers (tiny settings: this checks plumbing, not speed)."""

import json
import math

import pytest

from deconv_jax import benchmark

PLATFORM_KEYS = {"backend", "devices"}


def assert_positive_finite(record, keys):
  for key in keys:
    value = record[key]
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
    assert math.isfinite(value) and value > 0, (key, value)


def test_train_step_benchmark_record():
  record = benchmark.train_step_benchmark(8, steps=2, repeats=1)  # the default CNN with Adam
  assert record["benchmark"] == "train_step"
  assert record["batch_size"] == 8
  assert_positive_finite(record, ["images_per_sec", "steps_per_sec", "compile_sec", "devices"])
  assert record["images_per_sec"] == pytest.approx(8 * record["steps_per_sec"])
  assert isinstance(record["backend"], str) and record["backend"]


def test_deconv_kernel_grad_benchmark_record():
  record = benchmark.deconv_kernel_grad_benchmark(
    batch=2, in_hw=(3, 3), in_channels=4, out_channels=2, calls=2, repeats=1
  )
  assert record["benchmark"] == "deconv_kernel_grad"
  assert record["output_shape"] == [2, 6, 6, 2]
  assert record["kernel_shape"] == [4, 4, 2, 4]
  assert_positive_finite(record, ["lax_conv_transpose_ms", "ops_deconv2d_ms", "ratio", "devices"])
  assert record["ratio"] == pytest.approx(record["lax_conv_transpose_ms"] / record["ops_deconv2d_ms"])
  assert record["max_rel_diff"] <= 1e-4
  assert record.keys() >= PLATFORM_KEYS


def test_max_pool_grad_benchmark_record():
  record = benchmark.max_pool_grad_benchmark(shape=(2, 6, 6, 3), calls=2, repeats=1)
  assert record["benchmark"] == "max_pool_grad"
  assert_positive_finite(
    record, ["reduce_window_ms", "ops_max_pool_ms", "reshape_max_even_split_ms", "ratio", "ratio_vs_even_split"]
  )
  assert record["ratio_vs_even_split"] == pytest.approx(record["reshape_max_even_split_ms"] / record["ops_max_pool_ms"])
  assert record["max_rel_diff"] <= 1e-4
  assert record.keys() >= PLATFORM_KEYS


@pytest.mark.parametrize("wrt", ["kernel", "input"])
def test_deconv3d_grad_benchmark_record(wrt):
  record = benchmark.deconv3d_grad_benchmark(
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
  samples = benchmark._interleaved_ms([lambda: calls.append("a"), lambda: calls.append("b")], repeats=2, calls=1)
  assert calls == ["a", "b", "a", "b", "a", "b"]  # warm-up, then A, B, A, B
  assert [len(s) for s in samples] == [2, 2]


def test_check_same_rejects_different_gradients():
  with pytest.raises(RuntimeError, match="disagree"):
    benchmark._check_same("x", [1.0, 2.0], [1.0, 2.5])


def test_cli_prints_only_json_lines(cli):
  result = cli("deconv_jax.benchmark", "--only=max_pool_grad", "--repeats=1", "--steps=1", timeout=120)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  records = [json.loads(line) for line in lines]
  assert [r["benchmark"] for r in records] == ["max_pool_grad"]
  assert_positive_finite(records[0], ["reduce_window_ms", "ops_max_pool_ms", "ratio"])


@pytest.mark.parametrize("flag", ["--only=nope", "--batch_sizes=0"])
def test_cli_bad_flag_is_one_line_error(cli, flag):
  result = cli("deconv_jax.benchmark", flag, timeout=120)
  assert result.returncode != 0
  assert result.stdout == ""
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
