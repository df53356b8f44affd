"""The peer: diffusers' UNet2DModel with diffax's DDPM CIFAR-10 network, in PyTorch on CPU.

Same network as configs/cifar10_ddpm.py (full and `half` width): block_out_channels
(c, 2c, 2c, 2c), two ResNet blocks per level, attention at 16x16 and in the middle block,
GroupNorm 32, dropout 0.1, additive time embedding (the parameter counts match exactly). It
is trained as diffusers' train_unconditional example does (DDPMScheduler.add_noise, MSE on the
noise, Adam, gradient clipping at 1, EMAModel) and sampled with the schedulers' own loops; with
`compiled=True` its forward is `torch.compile`d (inductor), the second peer a user would try.
"""

import numpy as np
import torch
import torch.nn.functional as F

import diffusers
from diffusers.training_utils import EMAModel

SCHEDULERS = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler,
              "dpmpp_2m": diffusers.DPMSolverMultistepScheduler}
BASE = {"half": 64, "full": 128}


def unet(width: str) -> torch.nn.Module:
  """DDPM's CIFAR-10 U-Net (google/ddpm-cifar10-32's config) at base width 64 or 128."""
  c = BASE[width]
  return diffusers.UNet2DModel(
      sample_size=32, in_channels=3, out_channels=3, block_out_channels=(c, 2 * c, 2 * c, 2 * c),
      layers_per_block=2, norm_num_groups=32, norm_eps=1e-6, dropout=0.1,
      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
      attention_head_dim=None, resnet_time_scale_shift="default", flip_sin_to_cos=False,
      freq_shift=1)


def num_params(model: torch.nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def _to(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
  return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _schedule_kwargs():
  # DDPM's linear schedule, as in diffax's cifar10_ddpm config.
  return dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
              clip_sample=True)


class Sampler:
  """A diffusers scheduler loop (as DDPMPipeline / DDIMPipeline run it) from noise to x0."""

  def __init__(self, width: str, sampler: str, batch: int, steps: int, *, seed: int = 0,
               channels_last: bool = False, compiled: bool = False):
    torch.manual_seed(seed)
    self.model = unet(width).eval()
    self.channels_last = channels_last
    if channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
    self.forward = torch.compile(self.model) if compiled else self.model
    kwargs = _schedule_kwargs()
    if sampler == "dpmpp_2m":  # DPM-Solver++ has no clip_sample (its x0 clipping is free anyway)
      del kwargs["clip_sample"]
    self.scheduler = SCHEDULERS[sampler](**kwargs)
    self.shape = (batch, 3, 32, 32)
    self.steps = steps
    self.num_params = num_params(self.model)
    self.generator = torch.Generator().manual_seed(seed)

  @torch.inference_mode()
  def __call__(self):
    self.scheduler.set_timesteps(self.steps)
    x = _to(torch.randn(self.shape, generator=self.generator), self.channels_last)
    for t in self.scheduler.timesteps:
      eps = self.forward(x, t).sample
      x = self.scheduler.step(eps, t, x, generator=self.generator).prev_sample
    return x

  def flops_per_eval(self) -> float:
    """FLOPs of one model evaluation of the batch (PyTorch's FlopCounterMode)."""
    from benchmarks import limit  # pylint: disable=g-import-not-at-top
    x = torch.zeros(self.shape)
    t = torch.full((self.shape[0],), 500)
    with torch.inference_mode():
      return limit.torch_flops(lambda: self.model(x, t))


class TrainStep:
  """One train step: add_noise, forward, MSE on eps, backward, clip to 1, Adam, EMA."""

  def __init__(self, width: str, batch: int, *, seed: int = 0, channels_last: bool = False,
               compiled: bool = False):
    torch.manual_seed(seed)
    self.model = unet(width).train()
    self.channels_last = channels_last
    if channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
    self.forward = torch.compile(self.model) if compiled else self.model
    self.num_params = num_params(self.model)
    self.scheduler = diffusers.DDPMScheduler(**_schedule_kwargs())
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-4, foreach=True)
    self.ema = EMAModel(self.model.parameters(), decay=0.9999, foreach=True)
    rng = np.random.default_rng(seed)
    self.images = _to(torch.from_numpy(
        rng.uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32)), channels_last)
    self.batch = batch

  def __call__(self):
    noise = torch.randn_like(self.images)
    t = torch.randint(0, 1000, (self.batch,))
    x_t = self.scheduler.add_noise(self.images, noise, t)
    loss = F.mse_loss(self.forward(x_t, t).sample, noise)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.optimizer.step()
    self.ema.step(self.model.parameters())
    return loss.item()

  def flops(self) -> float:
    """FLOPs of one step's forward and backward (PyTorch's FlopCounterMode)."""
    from benchmarks import limit  # pylint: disable=g-import-not-at-top
    return limit.torch_flops(self)


def load_diffax_params(model: torch.nn.Module, cfg, params) -> None:
  """Loads a diffax U-Net's params of config `cfg` into `model` (`unet(width)`), converted by
  `diffax.interop.unet_to_diffusers`: both sides then compute the same function."""
  from diffax import interop  # pylint: disable=g-import-not-at-top
  arch = {k: v for k, v in cfg.model.items() if k not in ("name", "dtype", "fast_layers")}
  arch["sample_shape"] = (cfg.data.image_size, cfg.data.image_size, cfg.data.channels)
  _, state_dict = interop.unet_to_diffusers(arch, params)
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
                        strict=True)
