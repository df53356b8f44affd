"""The markdown table of a run, from its JSON records (one row per measured configuration)."""

import math

_COLUMNS = ("what", "config", "diffax", "peer (diffusers)", "peer (torch.compile)",
            "diffax / better peer", "target", "diffax GFLOP/s (% of matmul)",
            "peer GFLOP/s (% of matmul)")


def _fmt(x, digits: int = 3) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "-"
  if isinstance(x, float):
    return f"{x:.{digits}g}"
  return str(x)


def _rate(gflops, frac) -> str:
  if gflops is None:
    return "-"
  return f"{gflops:.3g} ({100 * frac:.0f} %)" if frac is not None else f"{gflops:.3g}"


def row(record: dict) -> list[str]:
  """The table cells of one comparison record (bench 'sampler', 'train' or 'compile')."""
  bench = record["bench"]
  diffax, peer = record.get("diffax", {}), record.get("peer") or {}
  if bench == "sampler":
    what = f"sample {record['sampler']}-{record['steps']}"
    config = f"{record['width']}, batch {record['batch']}"
    unit = lambda r: (f"{_fmt(r.get('images_per_s'))} img/s, {_fmt(r.get('ms_per_step'))} ms/step"
                      if r else "-")
  elif bench == "train":
    what = "train step"
    config = f"{record['width']}, batch {record['batch']}"
    unit = lambda r: f"{_fmt(r.get('images_per_s'))} img/s" if r else "-"
  elif bench == "compile":
    what = f"compile {record['what']}"
    config = f"{record['width']}, batch {record['batch']}"
    return [what, config, f"cold {_fmt(record['cold_s'])} s, warm {_fmt(record['warm_s'])} s",
            "-", "-", "-", record.get("target", "-"), "-", "-"]
  else:
    raise ValueError(f"no table row for bench {bench!r}")
  ratio = record.get("ratio_best", record.get("ratio"))  # older records: eager only
  return [what, config, unit(diffax), unit(peer), unit(record.get("peer_compiled")),
          f"{ratio:.2f}x" if ratio else "-", record.get("target", "-"),
          _rate(diffax.get("gflops"), diffax.get("frac_matmul")),
          _rate(peer.get("gflops"), peer.get("frac_matmul")) if peer else "-"]


def markdown(records: list[dict]) -> str:
  """A markdown table of every sampler/train/compile record, preceded by the machine line, and
  one of the memory records."""
  lines = []
  for r in records:
    if r.get("bench") == "machine":
      lines.append(f"{r['cpu']}, {r['cores']} cores ({', '.join(r.get('cpu_flags', []))}); "
                   f"jax {r['jax']}, torch {r.get('torch')}, diffusers {r.get('diffusers')}; "
                   f"{r['date']}; commit {r['commit']}; load average "
                   f"{'/'.join(str(x) for x in r.get('load_average', []))}")
    elif r.get("bench") == "limit":
      lines.append(f"fp32 matmul {r['n']}x{r['n']}: jax {r['jax_gflops']:.3g} GFLOP/s, torch "
                   f"{_fmt(r.get('torch_gflops'))} GFLOP/s; limit used: "
                   f"{r['limit_gflops']:.3g} GFLOP/s")
    elif r.get("bench") == "end" and "jax_gflops" in r:
      lines.append(f"fp32 matmul again at the end: jax {r['jax_gflops']:.3g} GFLOP/s, torch "
                   f"{_fmt(r.get('torch_gflops'))} GFLOP/s; load average "
                   f"{'/'.join(str(x) for x in r.get('load_average', []))}")
  lines += ["", "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
  for r in records:
    if r.get("bench") in ("sampler", "train", "compile"):
      lines.append("| " + " | ".join(row(r)) + " |")
  memory = [r for r in records if r.get("bench") == "memory"]
  if memory:
    lines += ["", "Peak resident memory, MiB: during a call (after warm-up) / of the whole process "
              "(compilation included); each side alone in a fresh process.", "",
              "| " + " | ".join(_MEMORY_COLUMNS) + " |", "|" + "---|" * len(_MEMORY_COLUMNS)]
    lines += ["| " + " | ".join(memory_row(r)) + " |" for r in memory]
  return "\n".join(lines)


_MEMORY_COLUMNS = ("what", "config", "diffax", "peer (diffusers)", "peer (torch.compile)",
                   "diffax / eager peer (during a call)")


def memory_row(record: dict) -> list[str]:
  """The memory table's cells of one 'memory' record."""
  what = (f"sample {record['sampler']}" if record["what"] == "sampler" else "train step")
  cell = lambda r: f"{r['run_mib']:.0f} / {r['peak_mib']:.0f}" if r else "-"
  diffax, peer = record["diffax"], record.get("peer")
  return [what, f"{record['width']}, batch {record['batch']}", cell(diffax), cell(peer),
          cell(record.get("peer_compiled")),
          f"{diffax['run_mib'] / peer['run_mib']:.2f}x" if peer else "-"]
