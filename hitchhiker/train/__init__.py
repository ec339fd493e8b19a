"""Training from the replay buffer: GRPO (grpo.py, loss.py), DPO (dpo.py), checkpoints and their registry."""
