"""Evaluation: how good are the samples, and how likely is the data.

  feats = inception_pool3(params, images)          # pytorch-fid's FID Inception, [N, 2048]
  mu, sigma = feature_stats(feats)                 # float64 (or FeatureStats, streaming)
  fd = frechet_distance((mu, sigma), (mu_ref, sigma_ref))
  kid = kernel_distance(feats, feats_ref)          # KID, unbiased polynomial-kernel MMD^2

The modules: `inception` (the FID network; weights via `diffax.interop.inception_from_torch`),
`classifier` (a small network trained on the data set: a feature space with no download),
`distances` (feature statistics, Frechet and kernel distances), `likelihood` (bits per
dimension from DDPM's variational bound), `ideal_denoiser` (E[x_0 | x_t] of a finite data set:
a model with no network error, for comparing samplers).

Everything here is pure: arrays in, numbers out. Files, checkpoints, reference statistics and
the evaluation of a run are the pipeline's (`diffax.pipeline.evaluate`).
"""

from diffax.evaluation import classifier
from diffax.evaluation import distances
from diffax.evaluation import ideal_denoiser
from diffax.evaluation import inception
from diffax.evaluation import likelihood
from diffax.evaluation.distances import (FeatureStats, feature_stats, frechet_distance,
                                         kernel_distance)
from diffax.evaluation.inception import inception_pool3
from diffax.evaluation.likelihood import bits_per_dim, vlb_terms

__all__ = ["FeatureStats", "bits_per_dim", "classifier", "distances", "feature_stats",
           "frechet_distance", "ideal_denoiser", "inception", "inception_pool3",
           "kernel_distance", "likelihood", "vlb_terms"]
