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
  """A markdown table of every sampler/train/compile record, preceded by the machine line."""
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
  return "\n".join(lines)
