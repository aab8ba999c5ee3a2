"""The pieces of `main.py`'s programs (`maml_tf.train`): the training loop, checkpoints and resume, epochs, the test
protocols and their evaluators, progress output. None names an algorithm; each reads what the algorithm declares."""
