"""Input pipeline: a TFDS dataset -> host-local numpy batches, resumable at any step.

`create_iterator(config, start_step=k)` yields, for every training step from `k` on, a dict of
host-local numpy arrays:

  {"image": f32 [B_local, H, W, C] in [-1, 1], "label": i32 [B_local]}

(plus `"caption": bytes [B_local]` when the dataset has a "caption" text feature), with
`B_local = config.train.batch_size // process_count`, `H = config.data.image_size`,
`W = config.data.image_width` (None: H, square images) and `C = config.data.channels`; for
`config.data.kind` "video" the key is "video", `f32 [B_local, T, H, W, C]`, for "audio" it is
"audio", `f32 [B_local, L, C]` (`kinds`, `preprocess`). No JAX
here: `diffax.pipeline.parallel` places the batches on devices.

Exact resume. The batch of step k is a function of (config.seed, k, process_index) alone, so a
run restarted at step k sees exactly the batches an uninterrupted run would have seen. This
host's shard of N examples is read as an endless stream of epochs; epoch e is the shard in an
order drawn from a seed derived from (seed, process_index, e), and example i of epoch e is
flipped (when config.data.random_flip; a clip's frames all alike; never audio) by a coin drawn
from (seed, process_index, e, i). Step k
reads stream positions [k * B_local, (k + 1) * B_local), so resuming means starting at epoch
(k * B_local) // N and skipping (k * B_local) % N examples of it. Batches run across epoch
boundaries; no example is dropped.

Two ways of reading, both exact:
- in memory (shards whose preprocessed float32 examples fit in IN_MEMORY_MAX_BYTES, e.g.
  digits, MNIST, moving_digits, tones): the shard is preprocessed once into a numpy array and each batch is a numpy gather;
  epoch orders are numpy permutations, so resuming costs nothing.
- streaming (larger shards, e.g. CIFAR-10 at 32x32x3, CelebA): tf.data reads the TFDS files in
  their fixed order (shuffle_files=False, deterministic), shuffles each epoch with a buffer of
  min(N, config.data.shuffle_buffer) and a seed per epoch (a full permutation when the buffer
  holds the shard), decodes and preprocesses in parallel, batches and prefetches. Resuming
  reads (but does not decode) the skipped part of the first epoch.
config.data.get("in_memory") = True/False forces one way; the default picks by size. Each way
gives its own (deterministic) order: a run must resume with the same choice it started with,
which the default guarantees for the same dataset, example shape and process count.

Preprocessing (`preprocess`): images and frames are decoded, center-cropped to the aspect ratio
H:W, resized to H x W and scaled to [-1, 1]; audio is scaled to [-1, 1], cropped or zero-padded
to length. Labels come from the "label" feature when the dataset has one, else they are zeros
(e.g. celeb_a, moving_mnist); a "caption" text feature is passed through.

Host sharding: process p of P reads `tfds.even_splits(config.data.split, P)[p]`: disjoint
shards covering the split, sizes differing by at most one.

TensorFlow is here only for tf.data. `_configure_tensorflow` hides every GPU from TensorFlow (so
it never takes accelerator memory from JAX) and bounds its thread pools to
`config.data.get("num_threads")` (default: half the CPU cores, at most 8) so it leaves the cores
to JAX; the tf.data pipeline runs in a private thread pool of that size.

Missing data: the embedded datasets ("digits", "moving_digits", "tones" and the captioned
digits of `datasets.captioned`) are prepared automatically (no network, seconds; mnist_text
from a prepared `mnist`). Any other dataset
that is not prepared in the data_dir is downloaded only when config.data.get("download", True)
is true (TFDS retries an unreachable network for minutes before it fails: the log says so
first); with download False it fails at once with a message that says how to prepare it.
"""

import math
import os
from typing import Iterator, NamedTuple, Optional

from absl import logging
import numpy as np


def _import_tensorflow_quietly():
  """Imports TensorFlow with the C++ runtime's stderr lines at import hidden.

  TensorFlow's runtime prints INFO lines (oneDNN, CPU features) on stderr when it loads, before
  TF_CPP_MIN_LOG_LEVEL takes effect; a user's config error must read as one line. Python
  exceptions of the import still propagate.
  """
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    import tensorflow  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    import tensorflow_datasets  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
  return tensorflow, tensorflow_datasets


tf, tfds = _import_tensorflow_quietly()

# pylint: disable=g-import-not-at-top,wrong-import-position
from diffax.pipeline import datasets as _datasets  # pylint: disable=unused-import  # registers them
from diffax.pipeline import kinds
from diffax.pipeline import preprocess as preprocess_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

# Shards whose preprocessed float32 examples take at most this many bytes are held in memory.
IN_MEMORY_MAX_BYTES = 256 * 2**20
# Batches tf.data prepares ahead of the training step (streaming only).
PREFETCH_BATCHES = 2
# Prepared without network, automatically (the MNIST captions from a prepared `mnist`).
EMBEDDED_DATASETS = ("digits", "moving_digits", "tones", "digits_text", "digits_pairs_text",
                     "mnist_text", "mnist_pairs_text")

Batch = dict[str, np.ndarray]

_tf_configured = False


class DatasetInfo(NamedTuple):
  """What a trainer needs to know about a dataset before reading it.

  Attributes:
    num_examples: examples in config.data.split, summed over all hosts.
    image_shape: the shape of one example the iterator yields: (H, W, C) of an image, or
      (T, H, W, C) / (L, C) of a video / audio clip (`kinds.sample_shape`).
    num_classes: classes of the "label" feature; 0 when the dataset has no labels.
  """

  num_examples: int
  image_shape: tuple[int, ...]
  num_classes: int


def create_iterator(config, *, start_step: int = 0, process_index: Optional[int] = None,
                    process_count: Optional[int] = None) -> Iterator[Batch]:
  """Returns an endless iterator of this host's training batches, from step `start_step` on.

  Args:
    config: a diffax config; reads `seed`, `train.batch_size` (global) and `data.*`.
    start_step: the step whose batch comes first; resuming at k yields the batches an
      uninterrupted run yields at k, k + 1, ...
    process_index: this host's index in [0, process_count); None means 0.
    process_count: the number of hosts feeding the global batch; None means 1.

  Returns:
    An iterator of dicts {"image": f32 [B_local, H, W, C] in [-1, 1], "label": i32 [B_local]},
    B_local = config.train.batch_size // process_count ("video" / "audio" and their shapes for
    those kinds).

  Raises:
    ValueError: on a bad config value, a batch size not divisible by process_count, or an
      unknown, missing or unsuitable dataset.
  """
  process_index = 0 if process_index is None else int(process_index)
  process_count = 1 if process_count is None else int(process_count)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, process_count); got process_index="
                     f"{process_index}, process_count={process_count}.")
  batch_size = int(config.train.batch_size)
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"config.train.batch_size={batch_size} must be a positive multiple of "
                     f"the number of processes ({process_count}).")
  if int(start_step) < 0:
    raise ValueError(f"start_step must be >= 0; got {start_step}.")
  local_batch = batch_size // process_count
  shape = kinds.sample_shape(config.data)
  if config.data.random_flip and kinds.kind(config.data) == "audio":
    raise ValueError("config.data.random_flip mirrors images and video frames; an audio clip "
                     "has nothing to mirror: set it to False.")
  _configure_tensorflow(config)
  builder = _prepared_builder(config)
  preprocess = preprocess_lib.make(builder.info.features, config.data)
  if config.model.get("context_dim", 0) and not preprocess.has_caption:
    raise ValueError(f"config.model.context_dim > 0 trains on captions, but "
                     f"config.data.dataset={config.data.dataset!r} has no 'caption' text "
                     f"feature (use e.g. digits_text)")
  split = config.data.split
  if process_count > 1:
    split = tfds.even_splits(split, n=process_count)[process_index]
  examples = _read(builder, split, preprocess.decoders)
  num_examples = _cardinality(examples, config.data)
  if num_examples == 0:
    raise ValueError(f"Process {process_index} of {process_count} has no examples of split "
                     f"{config.data.split!r} of {config.data.dataset!r}.")
  seed_key = _seed_key(config.seed, process_index)
  in_memory = config.data.get("in_memory", None)
  if in_memory is None:
    in_memory = num_examples * math.prod(shape) * 4 <= IN_MEMORY_MAX_BYTES
  logging.info("diffax.pipeline.data: %s split %r, process %d of %d: %d examples, %s, batch %d from "
               "step %d.", config.data.dataset, config.data.split, process_index, process_count,
               num_examples, "in memory" if in_memory else "streaming", local_batch,
               start_step)
  if in_memory:
    arrays = _load_all(examples, preprocess, config.data)
    return _in_memory_batches(arrays, key=preprocess.kind, seed_key=seed_key,
                              batch_size=local_batch,
                              start_step=int(start_step), random_flip=config.data.random_flip)
  return _streaming_batches(examples, preprocess.fn, config.data, num_examples=num_examples,
                            seed_key=seed_key, batch_size=local_batch,
                            start_step=int(start_step))


def dataset_info(config) -> DatasetInfo:
  """Returns the size of config.data.split, the yielded example shape and the number of classes.

  Prepares an embedded dataset if needed; raises like `create_iterator` on a missing dataset.
  """
  _configure_tensorflow(config)
  builder = _prepared_builder(config)
  features = builder.info.features
  preprocess = preprocess_lib.make(features, config.data)  # Validates the config against it.
  label = preprocess_lib.feature(features, "label") if preprocess_lib.has_label(features) else None
  return DatasetInfo(
      num_examples=_cardinality(_read(builder, config.data.split, preprocess.decoders),
                                config.data),
      image_shape=kinds.sample_shape(config.data),
      num_classes=int(getattr(label, "num_classes", 0) or 0))


def load_eval_images(config, num_images: Optional[int], *, split: Optional[str] = None) -> Batch:
  """Returns the first `num_images` examples of a split, preprocessed, unflipped, in file order.

  For evaluation against real data (reference statistics, held-out likelihoods). The order is
  the TFDS file order, which TFDS shuffles when it prepares a dataset, so the first examples
  are a fixed random sample of the split.

  Args:
    config: a diffax config (reads `data.*`).
    num_images: how many examples; at most the size of the split (None: all of them).
    split: a TFDS split; None means config.data.split (e.g. "test" for held-out digits).

  Returns:
    {"image": f32 [num_images, H, W, C] in [-1, 1], "label": i32 [num_images]} ("video" /
    "audio" and their shapes for those kinds; and "caption": bytes [num_images] for a
    captioned dataset).
  """
  _configure_tensorflow(config)
  builder = _prepared_builder(config)
  preprocess = preprocess_lib.make(builder.info.features, config.data)
  split = config.data.split if split is None else split
  examples = _read(builder, split, preprocess.decoders)
  available = _cardinality(examples, config.data)
  num_images = available if num_images is None else num_images
  if not 0 < num_images <= available:
    raise ValueError(f"num_images must be in [1, {available}] (the size of split {split!r} of "
                     f"{config.data.dataset!r}); got {num_images}.")
  return _load_all(examples.take(num_images), preprocess, config.data)


def captions(config, *, split: Optional[str] = None) -> list[str]:
  """The distinct captions of a captioned dataset's split (default config.data.split), sorted:
  what a text model's frozen encoder encodes once before training.

  Raises:
    ValueError: the dataset has no "caption" text feature.
  """
  _configure_tensorflow(config)
  builder = _prepared_builder(config)
  preprocess = preprocess_lib.make(builder.info.features, config.data)
  if not preprocess.has_caption:
    raise ValueError(f"config.data.dataset={config.data.dataset!r} has no 'caption' text "
                     f"feature")
  examples = _read(builder, config.data.split if split is None else split, preprocess.decoders)
  texts = examples.map(lambda example: example["caption"]).batch(4096)
  found = set()
  for batch in texts.with_options(_data_options(config.data)).as_numpy_iterator():
    found.update(t.decode("utf-8") for t in batch)
  return sorted(found)


def _configure_tensorflow(config) -> None:
  """Hides GPUs from TensorFlow and bounds its thread pools; once per process.

  Both settings only take effect before TensorFlow initializes its runtime (its first op); if
  something else ran a TensorFlow op first, this logs and keeps TensorFlow's own settings.
  """
  global _tf_configured
  if _tf_configured:
    return
  _tf_configured = True
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError) as e:
    logging.warning("diffax.pipeline.data: could not hide GPUs from TensorFlow: %s", e)
  threads = _num_threads(config.data)
  try:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
  except RuntimeError as e:
    logging.info("diffax.pipeline.data: could not bound TensorFlow's thread pools: %s", e)


def _num_threads(data_config) -> int:
  """TensorFlow's thread budget: config.data.get("num_threads"), else half the cores, <= 8."""
  threads = data_config.get("num_threads", None)
  if threads is None:
    threads = min(8, max(1, (os.cpu_count() or 2) // 2))
  return int(threads)


def _data_options(data_config) -> tf.data.Options:
  """Deterministic order, in a private thread pool of _num_threads threads."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = _num_threads(data_config)
  options.threading.max_intra_op_parallelism = 1
  return options


def _prepared_builder(config) -> tfds.core.DatasetBuilder:
  """Returns the TFDS builder of config.data.dataset with its data prepared, or raises."""
  name, data_dir = config.data.dataset, config.data.data_dir
  if not name:
    raise ValueError("config.data.dataset is empty (a converted checkpoint names no data): "
                     "convert it with scripts/convert.py --dataset=NAME (e.g. cifar10), the "
                     "data it was trained on, to evaluate or fine-tune it")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f"config.data.dataset={name!r} is not a TFDS dataset: use an embedded one "
        f"({', '.join(EMBEDDED_DATASETS)}) or a TFDS dataset name such as \"mnist\", "
        "\"cifar10\", \"celeb_a\", \"moving_mnist\", \"speech_commands\" "
        "(https://www.tensorflow.org/datasets/catalog).") from e
  if builder.is_prepared():
    return builder
  where = builder.data_dir
  if name in EMBEDDED_DATASETS:
    logging.info("diffax.pipeline.data: preparing %s in %s (no network needed).", name, where)
    try:
      builder.download_and_prepare()
    except Exception:  # pylint: disable=broad-except
      if not builder.is_prepared():  # Another process may have prepared it meanwhile.
        raise
    return builder
  how = (f"prepare it where there is network with `tfds.builder({name!r}, "
         f"data_dir={data_dir!r}).download_and_prepare()` (or copy a prepared "
         f"{name}/ folder into the data_dir), or point config.data.data_dir at a data_dir that "
         "has it")
  if not config.data.get("download", True):
    raise ValueError(f"Dataset {name!r} is not prepared in {where} (config.data.data_dir="
                     f"{data_dir!r}) and config.data.download is False: {how}.")
  logging.warning("diffax.pipeline.data: dataset %r is not prepared in %s; downloading it now. Without "
                  "network TFDS retries for minutes before it fails.", name, where)
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Dataset {name!r} is not prepared in {where} (config.data.data_dir="
                     f"{data_dir!r}) and downloading it failed ({type(e).__name__}: {e}). "
                     f"To fix: {how}.") from e
  return builder


def _read(builder, split, decoders) -> tf.data.Dataset:
  """Reads a split in the fixed order of its files; images stay encoded until preprocessing."""
  options = tf.data.Options()
  options.deterministic = True
  read_config = tfds.ReadConfig(options=options, try_autocache=False)
  return builder.as_dataset(split=split, shuffle_files=False, read_config=read_config,
                            decoders=decoders or None)


def _cardinality(examples: tf.data.Dataset, data_config) -> int:
  num_examples = int(examples.cardinality())
  if num_examples < 0:
    raise ValueError(f"Cannot tell the number of examples of split {data_config.split!r} of "
                     f"{data_config.dataset!r}.")
  return num_examples


def _load_all(examples, preprocess, data_config) -> Batch:
  """Preprocesses a whole (finite) dataset into numpy arrays, unflipped, in its order."""
  batches = (examples.map(preprocess.fn, num_parallel_calls=_num_threads(data_config))
             .batch(1024).with_options(_data_options(data_config)).as_numpy_iterator())
  parts = list(batches)
  return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _seed_key(seed, process_index) -> np.ndarray:
  """Two 32-bit words from (seed, process_index): the root of every data random choice."""
  words = np.random.SeedSequence([int(seed) % 2**63, process_index]).generate_state(2)
  return words.astype(np.int64)  # [2]


def _in_memory_batches(arrays, *, key="image", seed_key, batch_size, start_step,
                       random_flip) -> Iterator[Batch]:
  """Yields batches gathered from in-memory arrays: `arrays[key]` the examples, images
  [N, H, W, C] (or clips [N, T, H, W, C], [N, L, C]), and the rest (labels [N], captions [N])
  alike.

  Epoch e visits the examples in the permutation drawn from numpy's generator seeded with
  (seed_key, e) and flips position i of the epoch when the same generator's i-th coin says so.
  """
  num_examples = len(arrays[key])
  orders = {}  # epoch -> (permutation [N], flips [N]); holds the few epochs in use

  def order(epoch):
    if epoch not in orders:
      rng = np.random.default_rng([*seed_key.tolist(), epoch])
      orders[epoch] = (rng.permutation(num_examples), rng.random(num_examples) < 0.5)
      for old in [e for e in orders if e < epoch - 1]:
        del orders[old]
    return orders[epoch]

  step = start_step
  while True:
    positions = step * batch_size + np.arange(batch_size)
    epochs, offsets = np.divmod(positions, num_examples)
    index = np.empty(batch_size, np.int64)
    flip = np.zeros(batch_size, bool)
    for epoch in np.unique(epochs):
      mask = epochs == epoch
      permutation, flips = order(int(epoch))
      index[mask] = permutation[offsets[mask]]
      flip[mask] = flips[offsets[mask]] & random_flip
    batch = {name: value[index] for name, value in arrays.items()}
    image = batch[key]  # [B, H, W, C] or [B, T, H, W, C]
    image[flip] = image[flip][..., ::-1, :]  # left-right: W is the second-last axis
    yield batch
    step += 1


def _streaming_batches(examples, preprocess, data_config, *, num_examples, seed_key,
                       batch_size, start_step) -> Iterator[Batch]:
  """Yields batches of a tf.data pipeline over endless, per-epoch shuffled copies of a shard.

  Epoch e is shuffled with the seed drawn statelessly from fold_in(seed_key, e); its example at
  position i is flipped with the stateless seed fold_in(fold_in(seed_key, e), i).
  """
  start_epoch, offset = divmod(start_step * batch_size, num_examples)
  buffer_size = max(1, min(num_examples, int(data_config.shuffle_buffer)))
  threads = _num_threads(data_config)
  key = tf.constant(seed_key, tf.int64)
  random_flip = bool(data_config.random_flip)

  def epoch_examples(epoch):
    epoch_key = tf.random.experimental.stateless_fold_in(key, epoch)
    shuffle_seed = tf.random.stateless_uniform([], seed=epoch_key, minval=None, maxval=None,
                                               dtype=tf.int64)
    ds = examples.shuffle(buffer_size, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.enumerate()
    ds = ds.skip(tf.where(epoch == start_epoch, tf.constant(offset, tf.int64), 0))

    def prepare(position, example):
      flip_seed = (tf.random.experimental.stateless_fold_in(epoch_key, position)
                   if random_flip else None)
      return preprocess(example, flip_seed)

    return ds.map(prepare, num_parallel_calls=threads)

  ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_examples)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(PREFETCH_BATCHES)
  yield from ds.with_options(_data_options(data_config)).as_numpy_iterator()
