"""Adapters that start `normscope.track` from inside a training framework.

Import the one you need; each imports its framework, and says which extra to install if it is
missing (`normscope.integrations.lightning` / `.hf` are the same classes):

    from normscope.live.adapters.lightning import NormscopeCallback        # pytorch-lightning
    from normscope.live.adapters.hf import NormscopeTrainerCallback         # transformers
"""
