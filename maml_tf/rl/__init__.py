"""Reinforcement-learning pieces (the MAML paper's Section 5.3): advantages and the authors' baseline."""
