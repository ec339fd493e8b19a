"""Training from the replay buffer: GRPO (grpo.py, loss.py), DPO and ORPO (preference.py), checkpoints and their registry."""
