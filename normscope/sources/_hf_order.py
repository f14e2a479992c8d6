"""The parameter order of a Hugging Face model whose weights file lost it (safetensors sorts keys).

The Trainer saves the model's `config.json` beside its weights. transformers, where installed, builds
that architecture on the meta device (no memory, no weights, nothing downloaded) and its
`named_parameters()` give the order `Optimizer.state_dict()` numbered the parameters in. Only
architectures transformers itself ships are built: a config that asks for code from the Hub
(`auto_map`) is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Sequence

from ._keys import clean_names

CONFIG = "config.json"


def hf_parameter_order(directory: str) -> list[str] | None:
    """Parameter names in `model.named_parameters()` order, or None where it cannot be told."""
    path = os.path.join(directory, CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "auto_map" in config:
        return None
    architectures = config.get("architectures")
    if not (isinstance(architectures, list) and architectures and isinstance(architectures[0], str)):
        return None
    try:
        import torch  # lazy: torch, to build the model on the meta device; most runs never need it
        import transformers  # lazy: transformers is an optional extra
    except ImportError:
        return None
    model_class = getattr(transformers, architectures[0], None)
    if not isinstance(model_class, type) or not hasattr(model_class, "config_class"):
        return None
    # transformers' own warnings and logs (e.g. on generation settings) are not the user's business
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            hf_config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
            with torch.device("meta"):
                model = model_class(hf_config)
            return [name for name, _ in model.named_parameters()]
        finally:
            transformers.logging.set_verbosity(verbosity)
    return None


def ordered_names(
    directory: str, names: list[str], given: Sequence[str] | None = None
) -> tuple[list[str], bool]:
    """`names` in the model's parameter order — `given` (the user's model, `--model`), else the
    one the directory's config rebuilds — with the tensors it does not name (buffers, tied copies)
    last, and True; or `names` as they are and False."""
    order = list(given) if given else hf_parameter_order(directory)
    if not order:
        return names, False
    present = set(names)
    cleaned = list(clean_names(order).values())
    best = max((order, cleaned), key=lambda o: len(present.intersection(o)))
    ordered = [n for n in best if n in present]
    if len(ordered) * 2 < len(names):
        return names, False
    placed = set(ordered)
    return ordered + [n for n in names if n not in placed], True
