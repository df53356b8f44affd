"""diffax's FID Inception against pytorch-fid's, loaded with the same random weights.

pytorch-fid's network is built by pytorch-fid itself (`InceptionV3`, with its FID blocks, its
resize to 299 and its normalization); only the download of its weights is replaced by random
weights, so the test runs without network, in CI. Every weight is random: convolutions
He-scaled, batch-norm scales, shifts and running statistics away from their defaults.
"""

from unittest import mock

import jax
import numpy as np
import pytest
import torch

from diffax import evaluation
from diffax import interop
from diffax.evaluation import inception
from diffax.pipeline import features


def random_pytorch_fid_inception(seed=0):
  """pytorch-fid's `InceptionV3()` with random weights, and the state dict of its Inception3
  (the layout of pytorch-fid's .pth file) as numpy."""
  import pytorch_fid.inception as pfi  # pylint: disable=g-import-not-at-top
  built = {}

  def keep(self, state_dict, *args, **kwargs):  # instead of loading the downloaded weights
    del state_dict, args, kwargs
    built["inception3"] = self

  with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: None), \
       mock.patch.object(torch.nn.Module, "load_state_dict", keep):
    model = pfi.InceptionV3([3], resize_input=True, normalize_input=True).eval()
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in built["inception3"].state_dict().items():
      if t.dtype != torch.float32:
        continue
      if name.endswith("running_var"):
        t.copy_(0.5 + torch.rand(t.shape, generator=g))
      elif name.endswith("running_mean"):
        t.copy_(0.1 * torch.randn(t.shape, generator=g))
      elif name.endswith("bn.weight"):
        t.copy_(0.8 + 0.4 * torch.rand(t.shape, generator=g))
      elif name.endswith("bn.bias"):
        t.copy_(0.1 * torch.randn(t.shape, generator=g))
      else:  # conv weights (He) and the unused classifier
        t.copy_(torch.randn(t.shape, generator=g) * np.sqrt(2.0 / t[0].numel()))
  state_dict = {k: v.numpy().copy() for k, v in built["inception3"].state_dict().items()}
  return model, state_dict


@pytest.fixture(scope="module")
def reference():
  return random_pytorch_fid_inception()


def relative_error(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def test_pool3_features_equal_pytorch_fid(reference):
  """8x8 images through the whole FID path: [-1, 1] -> resize to 299 -> network -> 2048
  features, as pytorch-fid's InceptionV3 computes them from [0, 1] NCHW."""
  model, state_dict = reference
  variables = interop.inception_from_torch(state_dict)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  with torch.no_grad():
    expected = model(torch.from_numpy((images.transpose(0, 3, 1, 2) + 1) / 2))[0]
  expected = expected[:, :, 0, 0].numpy()
  got = np.asarray(jax.jit(evaluation.inception_pool3)(variables, images))
  assert got.shape == (2, 2048)
  assert expected.std() > 0.1  # random weights that keep the activations alive
  assert relative_error(got, expected) <= 1e-4, relative_error(got, expected)


def test_the_wrapper_state_dict_converts_to_the_same_variables(reference):
  model, state_dict = reference
  wrapper = {k: v.numpy() for k, v in model.state_dict().items()}
  assert any(k.startswith("blocks.3.2.") for k in wrapper)
  a, b = interop.inception_from_torch(state_dict), interop.inception_from_torch(wrapper)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("in_size, out_size", [(8, 299), (13, 5), (300, 299), (5, 17)])
def test_resize_is_torchs_bilinear_interpolation(in_size, out_size):
  x = np.random.default_rng(in_size).normal(size=(2, in_size, in_size + 1, 3)).astype(
      np.float32)
  expected = torch.nn.functional.interpolate(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(out_size, out_size), mode="bilinear",
      align_corners=False).numpy().transpose(0, 2, 3, 1)
  got = np.asarray(inception.resize_bilinear(x, out_size))
  np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)


def test_weights_of_the_wrong_shape_or_network_are_clear_errors(reference):
  _, state_dict = reference
  bad = dict(state_dict)
  bad["Mixed_6b.branch7x7_2.conv.weight"] = np.zeros((128, 128, 7, 1), np.float32)
  with pytest.raises(ValueError, match=r"Mixed_6b\.branch7x7_2\.conv\.weight has shape "
                                       r"\(128, 128, 7, 1\), the network needs "
                                       r"\(128, 128, 1, 7\).*pt_inception-2015-12-05"):
    interop.inception_from_torch(bad)
  missing = {k: v for k, v in state_dict.items() if not k.startswith("Mixed_7c.")}
  with pytest.raises(ValueError, match="lack .* Mixed_7c.*github.com/mseitzer/pytorch-fid"):
    interop.inception_from_torch(missing)
  imagenet = dict(state_dict, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
  with pytest.raises(ValueError, match="1000 classes .* not the FID network's 1008"):
    interop.inception_from_torch(imagenet)


def test_pth_is_converted_once_and_cached_as_npz(reference, tmp_path, monkeypatch):
  _, state_dict = reference
  pth = tmp_path / "pt_inception.pth"
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, pth)
  monkeypatch.setenv("DIFFAX_CACHE", str(tmp_path / "cache"))
  first = features.load_inception(str(pth))
  (cached,) = list((tmp_path / "cache").iterdir())
  assert cached.suffix == ".npz"
  monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("read the .pth again"))
  jax.tree.map(np.testing.assert_array_equal, features.load_inception(str(pth)), first)
  jax.tree.map(np.testing.assert_array_equal, features.load_inception(str(cached)), first)


def test_missing_weights_say_where_to_get_them_and_which_flag(tmp_path):
  for path in (None, str(tmp_path / "nowhere.pth")):
    with pytest.raises(FileNotFoundError) as e:
      features.load_inception(path)
    message = str(e.value)
    assert interop.pytorch_fid.WEIGHTS_URL in message and "--inception_weights" in message
    assert "config.eval.inception_weights" in message and "\n" not in message


def test_images_outside_minus_one_one_are_refused():
  with pytest.raises(ValueError, match=r"must lie in \[-1, 1\].*x / 127.5 - 1"):
    inception.check_images(np.full((1, 8, 8, 3), 255.0, np.float32))
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
    inception.check_images(np.zeros((8, 8, 3), np.float32))
