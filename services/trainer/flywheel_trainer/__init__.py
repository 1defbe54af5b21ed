"""Flywheel's trainer: watches ``dpo_pairs`` (and ``kto_examples``) grow and closes the loop.

``watcher`` decides when (``policy``: N new rows since the last job, a minimum interval, one
job at a time) and records the run in the registry before anything starts; ``launchers`` start
the job locally or as a Kubernetes Job; ``job`` reads pinned table versions by time travel
(``inputs``, ``dataset``), splits them by prompt group (``split``), trains a LoRA adapter with
TRL's DPOTrainer or KTOTrainer (``training``), scores candidate and champion against the
reference (``evaluate``) and lets the gate decide (``gate``: interval, slices, golden set);
``registry`` is the ``training_runs`` event log (rows in ``training_runs``); ``card`` writes
the model card; ``lake_admin``, ``export``, ``status`` and ``cli`` serve the operator.

Importing this package does not import torch; only ``job``, ``evaluate``, ``training`` and
``synthetic`` do.
"""
