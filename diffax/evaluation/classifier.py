"""A small image classifier whose features give a Frechet distance that needs no download.

The Inception network of FID is trained on ImageNet photographs and needs a 95 MB weights
file; for 8x8 digits or 28x28 MNIST-like data a classifier trained on the data set itself is
both cheaper and more telling. Its penultimate layer (after the nonlinearity) is the feature
space of the Frechet and kernel distances; its predictions give class coverage and the accuracy
of class-conditional samples.

  x [B, H, W, C] in [-1, 1]
  level i (widths[i]): conv3x3 -> GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU,
                       then 2x2 average pooling (not after the last level)
  global average pool -> Dense(feature_dim) -> SiLU = features -> Dense(num_classes) = logits

  net = diffax.evaluation.classifier.create(sample_shape=(8, 8, 1), num_classes=10)
  params = net.init_fn(jax.random.key(0))
  features, logits = net.features_fn(params, images)   # [B, 128], [B, 10]
"""

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvClassifier(nn.Module):
  """See the module docstring."""
  num_classes: int
  widths: Sequence[int] = (32, 64)
  feature_dim: int = 128
  num_groups: int = 8
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    for level, width in enumerate(self.widths):
      for j in range(2):
        x = nn.Conv(width, (3, 3), name=f"conv_{level}_{j}")(x)
        x = nn.GroupNorm(num_groups=self.num_groups, name=f"norm_{level}_{j}")(x)
        x = nn.silu(x)
      if level < len(self.widths) - 1:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))  # [B, widths[-1]]
    features = nn.silu(nn.Dense(self.feature_dim, name="features")(x))  # [B, feature_dim]
    hidden = nn.Dropout(self.dropout, deterministic=not train)(features)
    logits = nn.Dense(self.num_classes, name="logits")(hidden)  # [B, num_classes]
    return features, logits


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A classifier as pure functions.

  Attributes:
    init_fn: `init_fn(rng) -> params`.
    apply_fn: `apply_fn(params, x, *, train=False, rng=None) -> logits [B, K]` (rng feeds
      dropout when training).
    features_fn: `features_fn(params, x) -> (features [B, F], logits [B, K])`.
    sample_shape: the shape of one image, (H, W, C).
    num_classes: K.
    feature_dim: F.
  """
  init_fn: Callable
  apply_fn: Callable
  features_fn: Callable
  sample_shape: tuple
  num_classes: int
  feature_dim: int


def create(*, sample_shape, num_classes: int, widths: Sequence[int] = (32, 64),
           feature_dim: int = 128, num_groups: int = 8, dropout: float = 0.0) -> Classifier:
  """Builds the classifier of `sample_shape` images into `num_classes` classes.

  Raises:
    ValueError: on a bad keyword, naming it.
  """
  sample_shape = tuple(int(d) for d in sample_shape)
  if len(sample_shape) != 3:
    raise ValueError(f"sample_shape must be (H, W, C), got {sample_shape}")
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}")
  widths = tuple(int(w) for w in widths)
  if not widths or min(widths) < 1 or any(w % num_groups for w in widths):
    raise ValueError(f"widths={widths} must be positive multiples of num_groups={num_groups}")
  if 2 ** (len(widths) - 1) > min(sample_shape[:2]):
    raise ValueError(f"widths has {len(widths)} levels, too many for {sample_shape[0]}x"
                     f"{sample_shape[1]} images (each level but the last halves the size)")
  if feature_dim < 1:
    raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
  module = ConvClassifier(num_classes=num_classes, widths=widths, feature_dim=feature_dim,
                          num_groups=num_groups, dropout=dropout)

  def init_fn(rng):
    return module.init({"params": rng}, jnp.zeros((1, *sample_shape), jnp.float32))["params"]

  def apply_fn(params, x, *, train: bool = False, rng=None):
    rngs = {"dropout": rng} if train and rng is not None else {}
    return module.apply({"params": params}, x, train=train, rngs=rngs)[1]

  def features_fn(params, x):
    return module.apply({"params": params}, x)

  return Classifier(init_fn=init_fn, apply_fn=apply_fn, features_fn=features_fn,
                    sample_shape=sample_shape, num_classes=num_classes,
                    feature_dim=feature_dim)


def cross_entropy_loss_fn(net: Classifier) -> Callable:
  """`loss_fn(params, batch, rng) -> (loss, {"accuracy"})` for `batch = {"x": [B, H, W, C],
  "label": i32[B]}`: the mean softmax cross-entropy."""

  def loss_fn(params, batch, rng):
    logits = net.apply_fn(params, batch["x"], train=True, rng=rng)
    log_probs = jax.nn.log_softmax(logits)
    labels = batch["label"]
    loss = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
    return loss, {"accuracy": accuracy}

  return loss_fn
