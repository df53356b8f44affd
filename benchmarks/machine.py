"""What the numbers were measured on: CPU, cores, load, library versions, date, git commit."""

import datetime
import os
import platform
import subprocess

# XLA:CPU 0.10 hands convolutions to YNNPACK fusions by default, whose weight-gradient
# convolutions run at ~7 GFLOP/s here; without them XLA uses its Eigen convolutions (see
# README: train step 2x faster, sampling unchanged).
RECOMMENDED_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="


def prepend_xla_flags(flags: str) -> None:
  """Puts `flags` in front of any XLA_FLAGS already set; call it before JAX touches a backend,
  which reads XLA_FLAGS once."""
  if flags:
    os.environ["XLA_FLAGS"] = " ".join(f for f in (flags, os.environ.get("XLA_FLAGS", "")) if f)


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (Linux), else `platform.processor()`."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
  """The vector-ISA flags that bound a CPU's fp32/bf16 rate (AVX2, FMA, AVX-512*, AMX*)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          flags = line.split(":", 1)[1].split()
          return sorted(f for f in flags
                        if f in ("avx2", "fma") or f.startswith(("avx512", "amx", "avx_vnni")))
  except OSError:
    pass
  return []


def load_average() -> list[float]:
  """The 1, 5 and 15 minute load averages (other processes compete for the same cores)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def git_commit(repo: str) -> str:
  """The checkout's HEAD commit, with '+dirty' when tracked files differ from it."""
  try:
    head = subprocess.run(["git", "-C", repo, "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout.strip()
    return head + ("+dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def info(repo: str) -> dict:
  """One JSON-able record describing the machine and software of this run."""
  import jax  # pylint: disable=g-import-not-at-top
  record = {
      "bench": "machine",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "commit": git_commit(repo),
      "cpu": cpu_model(),
      "cpu_flags": cpu_flags(),
      "cores": os.cpu_count(),
      "load_average": load_average(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jax_backend": jax.default_backend(),
      "jax_devices": len(jax.devices()),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import diffusers  # pylint: disable=g-import-not-at-top
    record.update(torch=torch.__version__, diffusers=diffusers.__version__,
                  torch_threads=torch.get_num_threads())
  except ImportError:
    record.update(torch=None, diffusers=None)
  return record
