"""The training job: ``python -m ringd.train SPEC.json``, run by the daemon in a child process.

The daemon imports only the torch-free parts of this package: :mod:`ringd.train.spec`
(the job spec it writes), :mod:`ringd.train.window` (how many games a job trains on
and for how many steps), :mod:`ringd.train.holdout` (which games no job trains on)
and :mod:`ringd.train.protocol` (the exit codes, and the event models the job prints
and :func:`~ringd.train.protocol.parse_event` reads).
Nothing imported by this ``__init__`` may import torch.

The job, stage by stage (each module does one thing):

* :mod:`~ringd.train.games`: read the window's game spans, check their keys;
* :mod:`~ringd.train.encode`, :mod:`~ringd.train.grid`: encoders (record -> samples);
* :mod:`~ringd.train.cache`: the per-config sample cache, each game encoded once;
* :mod:`~ringd.train.data`: the window as samples, the batch indices of each step;
* :mod:`~ringd.train.loader`: three loader tiers (device-resident, pinned, memory-mapped);
* :mod:`~ringd.train.model`, :mod:`~ringd.train.step`: the network and its training
  step (eager or one CUDA graph);
* :mod:`~ringd.train.lr`: the learning-rate schedule;
* :mod:`~ringd.train.checkpoint`: atomic checkpoints;
* :mod:`~ringd.train.evaluate`: each checkpoint measured on the held-out games;
* :mod:`~ringd.train.loop`: the ``Trainer`` (setup, then the loop);
  :mod:`~ringd.train.job`: the program.

See docs/training-job.md for the spec, the stdout protocol and the exit codes.
"""
