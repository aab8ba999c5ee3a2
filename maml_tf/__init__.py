"""maml_tf: gradient-based meta-learning (MAML and its family) in TensorFlow 2 / Keras 3.

Modules: `config` (run options), `networks` (the original MAML networks),
`functional` (running a Keras model with other weights), `losses`,
`algorithms` (registry: MAML, first-order MAML), `data` (task sources),
`train` (the main.py training and test programs), `tf1_checkpoint`
(original TF1 checkpoints), `plotting`.
"""
