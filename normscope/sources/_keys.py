"""Parameter-name clean-up shared by every layout.

Wrappers add prefixes that are not part of the model: `module.` (DataParallel/DDP), `_orig_mod.`
(torch.compile, possibly nested inside a Lightning module) and Lightning's `model.` attribute. The
first two are removed wherever they lead a name; `model.` only when every key has it, because a
plain model may well have a sub-module called `model`.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat

_ALWAYS = ("module.", "_orig_mod.")


def _strip_wrappers(name: str) -> str:
    if "module." not in name and "_orig_mod." not in name:  # most names: two substring scans
        return name
    name = name.replace("._orig_mod.", ".")
    changed = True
    while changed:
        changed = False
        for prefix in _ALWAYS:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def clean_names(names: Iterable[str]) -> dict[str, str]:
    """Map each original name to its clean name; keeps the originals if cleaning would collide."""
    names = list(names)
    joined = "\0".join(names)  # one scan for the wrappers in every name at once
    if "module." not in joined and "_orig_mod." not in joined:
        if not (names and all(map(str.startswith, names, repeat("model.")))):
            return dict(zip(names, names))  # nothing to clean (most checkpoints)
        cleaned = names
    else:
        cleaned = [_strip_wrappers(n) for n in names]
    if cleaned and all(map(str.startswith, cleaned, repeat("model."))):
        cleaned = [c[len("model.") :] for c in cleaned]
        cleaned = [_strip_wrappers(c) for c in cleaned]
    if len(set(cleaned)) != len(cleaned):
        return {n: n for n in names}
    return dict(zip(names, cleaned))
