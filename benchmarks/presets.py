"""The benchmark cases' settings, shared by `bench_meta_iteration.py` (this port) and
`bench_original.py` (the original code): the names are both `Config` fields and the
original `main.py`'s flags."""

PRESETS = {  # The original README's settings, then others' (no counterpart in the original code).
    "sinusoid": dict(datasource="sinusoid", norm="None", update_batch_size=10, meta_batch_size=25),
    "omniglot5": dict(datasource="omniglot", meta_batch_size=32, update_batch_size=1, update_lr=0.4, num_updates=1),
    "omniglot20": dict(datasource="omniglot", num_classes=20, meta_batch_size=16, update_batch_size=1,
                       update_lr=0.1, num_updates=5),
    "miniimagenet": dict(datasource="miniimagenet", meta_batch_size=4, update_batch_size=1, update_lr=0.01,
                         num_updates=5, num_filters=32, max_pool=True),
    # MMAML's 5-mode regression (vuoristo/MMAML-Regression's command): 25 tasks per mode, 5 steps of 0.001.
    "multimodal5": dict(datasource="multimodal_regression", num_modes=5, norm="None", update_batch_size=5,
                        meta_batch_size=125, num_updates=5),
}
