"""Adapters that start `normscope.track` from inside a training framework (the documented import
paths; the adapters live in `normscope.live.adapters`).

Import the one you need; each imports its framework, and says which extra to install if it is
missing:

    from normscope.integrations.lightning import NormscopeCallback        # pytorch-lightning
    from normscope.integrations.hf import NormscopeTrainerCallback         # transformers
"""
