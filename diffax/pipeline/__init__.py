"""The pipeline: config in, workdir out.

It unpacks config sections into library calls and owns everything the library does not touch:
the run directory (`workdir`, the one owner of its layout), data (`data`, `datasets`: TFDS to
host numpy), devices and hosts (`parallel`), checkpoints (`checkpoint`, Orbax), the training
state, step and optimizer (`state`, `step`, `optim`), logging (`metric_writer`, `train_log`),
pictures (`images`), cross-field config checks (`checks`) and the command line's errors (`cli`).

  train.train_and_evaluate(config, workdir)   # scripts/train.py
  sample.sample_workdir(workdir, ...)         # scripts/sample.py
  cascade.sample(cascade.load(workdirs), ...) # scripts/sample.py --workdir=A,B / --cascade

`build` turns config sections into library objects (schedule, model, loss, sampler); `tasks`
says what a stage trains (a diffusion model today); `conditions` builds a model's cond from data
batches and from requests (labels, captions through the frozen text encoder of `text`, low-res
images); `shapes` says what one example's shape is. Modules are imported on demand: the data
pipeline imports TensorFlow.
"""
