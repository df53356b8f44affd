"""The pipeline: config in, workdir out.

It unpacks config sections into library calls and owns everything the library does not touch:
the run directory (`workdir`, the one owner of its layout), data (`data`, `datasets`,
`preprocess`: TFDS to host numpy; `kinds`: whether an example is an image, a video clip or an
audio clip, and its shape), devices and hosts (`parallel`), checkpoints (`checkpoint`, Orbax),
the training state, step and optimizer (`state`, `step`, `optim`), logging (`metric_writer`,
`train_log`), what people see and hear (`media`: `images` PNG grids, `videos` GIFs, `sounds`
WAV files and spectrograms; `masks`: frame and sample masks for editing), cross-field config
checks (`checks`) and the command line's errors (`cli`).

  train.train_and_evaluate(config, workdir)   # scripts/train.py
  sample.sample_workdir(workdir, ...)         # scripts/sample.py
  cascade.sample(cascade.load(workdirs), ...) # scripts/sample.py --workdir=A,B / --cascade

`build` turns config sections into library objects (schedule, model, loss, sampler); `tasks`
says what a stage trains (a diffusion model, an autoencoder, a classifier); `conditions` builds
a model's cond from data batches and from requests (labels, captions through the frozen text
encoder of `text`, low-res images); `kinds` says what one example is (image, video or audio
clip) and its shape. Modules are imported on demand: the data pipeline imports TensorFlow.
"""
