"""Scale invariance guessed from a checkpoint's parameter names, order and shapes alone.

A conv/linear weight is guessed invariant when the very next module in state-dict order is a
normalization over its output channels, inside the same parent module:
  - BatchNorm (running_mean/running_var buffers of matching size, or a bn/batchnorm name): the
    weight's own bias, if any, is cancelled by the per-channel mean, so it stays invariant;
  - LayerNorm/GroupNorm/RMSNorm (a 1-D scale of matching size with an ln/norm/gn name): invariant
    only without a bias in between, and a weaker guess, since a residual added before the norm
    (post-LN transformers) cannot be seen in names.
Requiring the same parent keeps pre-LN residual writers out: `blocks.0.attn.proj` is followed in
order by `blocks.0.ln2`, whose parent differs. Everything else is guessed not invariant. A bias
directly before BatchNorm is guessed invariant (the loss does not depend on it at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from normscope.analysis.homogeneity import INVARIANT, NOT_INVARIANT, VERDICT_UNKNOWN

_BN_HINTS = ("bn", "batchnorm", "batch_norm")
_FEATURE_NORM_HINTS = ("ln", "layernorm", "layer_norm", "gn", "groupnorm", "group_norm", "rmsnorm",
                       "rms_norm", "norm")


@dataclass(frozen=True)
class StructuralGuess:
    param: str
    verdict: str
    norm_layer: str | None  # the normalization the guess rests on
    norm_kind: str | None  # "batch" or "feature"
    detail: str


@dataclass(frozen=True)
class _Layer:
    name: str
    params: dict[str, tuple[str, tuple[int, ...]]]  # leaf name -> (kind, shape)


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split("x")) if isinstance(text, str) and text else ()


def _parent(layer: str) -> str:
    return layer.rpartition(".")[0]


def _layers_in_order(table: pd.DataFrame) -> list[_Layer]:
    snapshot = table["snapshot"]
    first = table.loc[snapshot == snapshot.min(), ["param", "layer", "kind", "shape"]]  # not every column
    layers: dict[str, _Layer] = {}
    for param, layer, kind, shape in zip(first["param"], first["layer"], first["kind"], first["shape"]):
        leaf = param[len(layer) + 1:] if param.startswith(layer + ".") else param
        layers.setdefault(layer, _Layer(layer, {})).params[leaf] = (kind, _shape(shape))
    return list(layers.values())


def _norm_kind(layer: _Layer, channels: int) -> str | None:
    """'batch', 'feature' or None: is this layer a normalization over `channels` channels?"""
    leaf = layer.name.rpartition(".")[2].lower()
    sizes = {shape[0] for kind, shape in layer.params.values() if len(shape) == 1}
    if sizes != {channels} or any(len(shape) != 1 for _, shape in layer.params.values()):
        return None
    if "running_mean" in layer.params or "running_var" in layer.params or any(h in leaf for h in _BN_HINTS):
        return "batch"
    has_scale = any(kind == "norm" for kind, _ in layer.params.values())
    if has_scale and any(h in leaf for h in _FEATURE_NORM_HINTS):
        return "feature"
    return None


def _next_norm(layers: list[_Layer], i: int, channels: int | None, sorted_names: bool,
               siblings_of: dict[str, list[_Layer]] | None = None) -> tuple[str | None, str | None]:
    """(kind, layer name) of the normalization that follows layer i, if any.

    With real module order, the next layer must be it. When the file sorted its names (safetensors
    does), order says nothing, so take the one sibling BatchNorm of matching size, if unique; a
    sibling LayerNorm is as likely to normalize a residual stream the weight writes into.
    `siblings_of` (the layers by parent, in order) spares a pass over every layer for each.
    """
    layer = layers[i]
    if channels is None:
        return None, None
    if not sorted_names:
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if nxt is None or _parent(nxt.name) != _parent(layer.name):
            return None, None
        kind = _norm_kind(nxt, channels)
        return (kind, nxt.name) if kind else (None, None)
    same_parent = (siblings_of[_parent(layer.name)] if siblings_of is not None
                   else [other for other in layers if _parent(other.name) == _parent(layer.name)])
    siblings = [(k, other.name) for other in same_parent if other is not layer
                for k in [_norm_kind(other, channels)] if k == "batch"]
    return siblings[0] if len(siblings) == 1 else (None, None)


def structural_guesses(table: pd.DataFrame) -> dict[str, StructuralGuess]:
    """A guess for every parameter (buffers excluded), from the first snapshot's names/order/shapes."""
    layers = _layers_in_order(table)
    names = [layer.name for layer in layers]
    sorted_names = len(names) > 2 and names == sorted(names)
    siblings_of: dict[str, list[_Layer]] = {}
    for layer in layers:
        siblings_of.setdefault(_parent(layer.name), []).append(layer)
    guesses: dict[str, StructuralGuess] = {}
    for i, layer in enumerate(layers):
        weight = layer.params.get("weight")
        channels = weight[1][0] if weight is not None and len(weight[1]) >= 2 else None
        norm, norm_layer = _next_norm(layers, i, channels, sorted_names, siblings_of)
        has_bias = "bias" in layer.params
        for leaf, (kind, _shape) in layer.params.items():
            param = f"{layer.name}.{leaf}" if leaf != layer.name else leaf
            if kind == "buffer":
                continue
            guess = _guess(param, leaf, kind, norm, norm_layer, has_bias)
            if sorted_names and guess.norm_layer is not None:
                guess = StructuralGuess(guess.param, guess.verdict, guess.norm_layer, guess.norm_kind,
                                        guess.detail + " (names are sorted in the file, so the order is inferred)")
            guesses[param] = guess
    return guesses


def _guess(param: str, leaf: str, kind: str, norm: str | None, norm_layer: str | None, has_bias: bool) -> StructuralGuess:
    if norm is None:
        what = {"norm": "a normalization scale", "bias": "a bias"}.get(kind, f"a {kind} tensor")
        why = ("no normalization over its outputs follows it" if kind == "weight"
               else f"{what} with no normalization right after it")
        return StructuralGuess(param, NOT_INVARIANT, None, None, why)
    if leaf == "bias":
        if norm == "batch":
            return StructuralGuess(param, INVARIANT, norm_layer, norm,
                                   f"a bias right before BatchNorm {norm_layer}: the mean subtraction removes it")
        return StructuralGuess(param, NOT_INVARIANT, norm_layer, norm,
                               f"a bias before {norm_layer} shifts what that normalization sees")
    if kind != "weight":
        return StructuralGuess(param, NOT_INVARIANT, None, None, f"a {kind} tensor")
    if norm == "batch":
        extra = " (its bias cancels in the batch mean)" if has_bias else ""
        return StructuralGuess(param, INVARIANT, norm_layer, norm,
                               f"followed by BatchNorm {norm_layer} over its output channels{extra}")
    if has_bias:
        return StructuralGuess(param, NOT_INVARIANT, norm_layer, norm,
                               f"its bias is added before {norm_layer}, which does not cancel it")
    return StructuralGuess(param, INVARIANT, norm_layer, norm,
                           f"followed by {norm_layer} (Layer/Group/RMS norm of matching size); "
                           "a residual added before it would break this — weaker guess")


__all__ = ["INVARIANT", "NOT_INVARIANT", "VERDICT_UNKNOWN", "StructuralGuess", "structural_guesses"]
