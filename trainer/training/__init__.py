"""The training steps: the model and its weights, target data and views, the frozen trunk's feature cache, the
optimizer and schedule, DDP plumbing and checkpoints. Never talks to the service."""
