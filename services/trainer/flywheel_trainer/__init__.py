"""Flywheel's trainer: watches ``dpo_pairs`` grow and closes the loop.

``watcher`` decides when (N new pairs since the last job, a minimum interval, one job at a
time) and records the run in the registry before anything starts; ``launchers`` start the job
locally or as a Kubernetes Job; ``job`` trains a LoRA adapter with TRL's DPOTrainer on a pinned
table version read by time travel (``dataset``); ``evaluate`` scores it against the reference and
the champion and gates promotion; ``registry`` is the ``training_runs`` event log; ``lake_admin``
and ``cli`` are the operator's pins, restores, exports and model rollbacks.

Importing this package does not import torch; only ``job``, ``evaluate`` and ``synthetic`` do.
"""
