"""The trainer: rounds of selective joint fine-tuning against a retrieval service (``sjft-train``,
``python -m trainer``). ``run.py`` is the algorithm; each folder is one concern (docs/ARCHITECTURE.md):

- ``rounds/``: the round's algorithm as pure functions and data (K rule, sample plan, selection state);
- ``remote/``: what rank 0 asks the service (queries, neighbor windows, sources, leak guard, jobs);
- ``training/``: the training steps (model, data, views, features, optimizer, DDP, checkpoints);
- ``reports/``: what people read about a run (metrics, curves, the selection report);
- ``ablation/``: the paper's ablation table over seeds, on top of ``run``.
"""
