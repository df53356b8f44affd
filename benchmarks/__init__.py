"""Speed benchmarks of diffax, side by side with PyTorch diffusers and the machine's matmul rate.

`python benchmarks/run.py` runs them all (see benchmarks/README.md). Nothing here is imported by
the library; the PyTorch peer needs the `bench` extra (`pip install -e ".[bench]"`).
"""
