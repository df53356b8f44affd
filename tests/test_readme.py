"""The README's library example prints the numbers the README says it prints."""

import contextlib
import io
import os
import re

from conftest import REPO


def library_example():
  """The README's python block under "## The library" and the numbers its comment states."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  section = text[text.index("## The library"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  stated = re.search(r"# ([0-9.]+) and ([0-9.]+)", code)
  return code, (float(stated.group(1)), float(stated.group(2)))


def test_the_library_example_prints_what_the_readme_says():
  code, (mean, std) = library_example()
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
  printed = [float(v) for v in out.getvalue().split()]
  assert [round(v, 3) for v in printed] == [mean, std], out.getvalue()
