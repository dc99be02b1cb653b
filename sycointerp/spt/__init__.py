"""Supervised Pinpoint Tuning: head slices, tunable deltas and baselines, the training loop,
dialogues, the registry of SPT methods and the steering baselines."""
