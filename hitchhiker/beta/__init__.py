"""The Beta position head: a small MLP policy over state features, trained by REINFORCE on the same buffer."""
