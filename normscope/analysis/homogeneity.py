"""Exact scale invariance from the model's graph: degrees of homogeneity (Li & Arora 2019, docs/science.md §2.4).

For one candidate parameter P, every value in the traced graph gets a `Degree`: the network value
v(c) computed with P replaced by c·P satisfies v(c) = c^d · v(1) for all c > 0 (HOMOGENEOUS, degree d),
or that plus a term that is constant over the batch and spatial dimensions (OFFSET — what a conv or
linear bias adds, and what BatchNorm's mean subtraction removes), or neither (MIXED), or we do not
model the operation (UNKNOWN). P is scale-invariant iff every network output is HOMOGENEOUS of
degree 0.

Rules: inputs 0; a linear/conv whose weight is P adds 1; ReLU/pooling/reshapes keep the degree;
adding unequal degrees is MIXED, except a bias computed from parameters only, which gives OFFSET;
normalization maps any HOMOGENEOUS input to 0 (BatchNorm/InstanceNorm also accept OFFSET: the
per-channel mean removes it; LayerNorm/GroupNorm do not); an affine normalization then takes the
degree of its scale and shift. Normalization is analysed as in train mode (batch statistics) and
without its eps, which is how invariance is meant in training dynamics.

Values that do not depend on P at all are degree 0 whatever the operation, so unknown operations
only matter where P's influence flows through them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import fx, nn

HOMOGENEOUS = "homogeneous"
OFFSET = "offset"
MIXED = "mixed"
UNKNOWN = "unknown"

INVARIANT = "invariant"
NOT_INVARIANT = "not invariant"
VERDICT_UNKNOWN = "unknown"

_C = TypeVar("_C")  # what a rule reads of one call: `_Call` (functions) or `_ModuleCall`


@dataclass(frozen=True)
class Degree:
    """What scaling the candidate by c does to one value of the graph."""

    status: str  # HOMOGENEOUS, OFFSET, MIXED or UNKNOWN
    value: int = 0  # the degree d (HOMOGENEOUS / OFFSET)
    # flags by keyword only: `Degree(MIXED, 0, True, False)` does not say which flag is which
    _: KW_ONLY
    depends: bool = False  # the value depends on the candidate at all
    input_free: bool = True  # computed from parameters and constants only (no network input)
    why: str = ""  # where and why homogeneity broke (MIXED / UNKNOWN)

    @property
    def clean(self) -> bool:
        return self.status == HOMOGENEOUS


CONSTANT = Degree(HOMOGENEOUS, 0)


@dataclass(frozen=True)
class HomogeneityVerdict:
    """The graph analysis' answer for one parameter."""

    param: str
    verdict: str  # INVARIANT, NOT_INVARIANT, VERDICT_UNKNOWN
    output_degree: int | None
    reason: str


# --------------------------------------------------------------------------- combining degrees


def _broken(*degrees: Degree) -> Degree | None:
    """The first MIXED (else UNKNOWN) input, which the result inherits."""
    for status in (MIXED, UNKNOWN):
        for d in degrees:
            if d.status == status:
                return d
    return None


def add_degrees(a: Degree, b: Degree, where: str) -> Degree:
    """The degree of a + b: equal degrees stay; an input-free term added to a degree-d value is an
    OFFSET; other unequal degrees are MIXED.

    Args:
        a: the degree of one term.
        b: the degree of the other.
        where: the node, for the reason of a MIXED result.

    Returns:
        The degree of the sum.

    >>> linear = Degree(HOMOGENEOUS, 1, depends=True, input_free=False)
    >>> add_degrees(linear, CONSTANT, "fc").status  # a bias added to a linear layer's output
    'offset'
    >>> add_degrees(linear, Degree(HOMOGENEOUS, 2, depends=True, input_free=False), "add").why
    'add: adds terms of degree 1 and 2'
    """
    depends, free = a.depends or b.depends, a.input_free and b.input_free
    if not depends:
        return Degree(HOMOGENEOUS, 0, depends=False, input_free=free)
    bad = _broken(a, b)
    if bad is not None:
        return bad
    if a.value == b.value:
        status = OFFSET if OFFSET in (a.status, b.status) else HOMOGENEOUS
        return Degree(status, a.value, depends=True, input_free=free)
    # unequal degrees: fine only when the odd one out is input-free, i.e. constant over the batch
    for main, other in ((a, b), (b, a)):
        if other.input_free and not main.input_free:
            return Degree(OFFSET, main.value, depends=True, input_free=False)
    return Degree(MIXED, 0, depends=True, input_free=free, why=f"{where}: adds terms of degree {a.value} and {b.value}")


def multiply_degrees(a: Degree, b: Degree, where: str, sign: int = 1) -> Degree:
    """The degree of a * b (sign=+1) or a / b (sign=-1): degrees add (subtract); a product with
    a biased (OFFSET) value is MIXED.

    Args:
        a: the degree of the first factor.
        b: the degree of the second.
        where: the node, for the reason of a MIXED result.
        sign: +1 for a product, -1 for a quotient.

    Returns:
        The degree of the product or quotient.

    >>> weight = Degree(HOMOGENEOUS, 1, depends=True, input_free=True)
    >>> multiply_degrees(weight, weight, "mul").value
    2
    >>> multiply_degrees(weight, weight, "div", sign=-1).value
    0
    """
    depends, free = a.depends or b.depends, a.input_free and b.input_free
    if not depends:
        return Degree(HOMOGENEOUS, 0, depends=False, input_free=free)
    bad = _broken(a, b)
    if bad is not None:
        return bad
    if OFFSET in (a.status, b.status):
        return Degree(MIXED, 0, depends=True, input_free=free, why=f"{where}: multiplies a biased value")
    return Degree(HOMOGENEOUS, a.value + sign * b.value, depends=True, input_free=free)


def keep_degree(x: Degree, where: str, *, keeps_offset: bool) -> Degree:
    """The degree after a positively homogeneous, shape-only or linear pooling operation.

    Args:
        x: the degree of its input.
        where: the node, for the reason of a MIXED result.
        keeps_offset: the operation carries a per-channel constant through unchanged (a
            reshape, average pooling); otherwise (ReLU) a biased input makes the result MIXED.

    Returns:
        `x`, or MIXED for a biased input the operation does not carry.
    """
    if x.status == OFFSET and not keeps_offset:
        return Degree(MIXED, 0, depends=True, input_free=x.input_free, why=f"{where}: applied to a biased value")
    return x


def zero_degree_only(x: Degree, where: str) -> Degree:
    """The degree after a nonlinearity that is not positively homogeneous (GELU, softmax, tanh).

    Args:
        x: the degree of its input.
        where: the node, for the reason of a MIXED result.

    Returns:
        `x` where it is degree 0 or does not depend on the candidate, else MIXED.
    """
    if not x.depends:
        return x
    if x.clean and x.value == 0:
        return x
    bad = _broken(x)
    if bad is not None:
        return bad
    what = "a biased value" if x.status == OFFSET else f"a degree-{x.value} value"
    return Degree(MIXED, 0, depends=True, input_free=x.input_free, why=f"{where}: nonlinearity of {what}")


def normalize(x: Degree, where: str, *, removes_offset: bool) -> Degree:
    """The degree after a normalization without its affine part: any homogeneous input becomes
    degree 0.

    Args:
        x: the degree of its input.
        where: the node, for the reason of a MIXED result.
        removes_offset: the per-channel mean is subtracted (BatchNorm, InstanceNorm), so a
            biased input is degree 0 too; LayerNorm and GroupNorm do not remove it.

    Returns:
        Degree 0, or MIXED for a bias the normalization does not cancel.

    >>> biased = Degree(OFFSET, 1, depends=True, input_free=False)
    >>> normalize(biased, "bn", removes_offset=True).status
    'homogeneous'
    >>> normalize(biased, "ln", removes_offset=False).status
    'mixed'
    """
    if not x.depends:
        return Degree(HOMOGENEOUS, 0, depends=False, input_free=x.input_free)
    bad = _broken(x)
    if bad is not None:
        return bad
    if x.status == OFFSET and not removes_offset:
        return Degree(MIXED, 0, depends=True, input_free=x.input_free, why=f"{where}: a bias before this normalization does not cancel")
    return Degree(HOMOGENEOUS, 0, depends=True, input_free=False)


def affine(x: Degree, weight: Degree | None, bias: Degree | None, where: str) -> Degree:
    """The degree of x * weight + bias, a normalization's affine part.

    Args:
        x: the degree of the normalized value.
        weight: the degree of the scale, or None without one.
        bias: the degree of the shift, or None without one.
        where: the node, for the reason of a MIXED result.

    Returns:
        The degree of the result.
    """
    out = x
    if weight is not None:
        out = multiply_degrees(out, weight, where)
    if bias is not None:
        out = add_degrees(out, bias, where)
    return out


# --------------------------------------------------------------------------- the graph walk

_KEEP_MODULES = (
    "ReLU", "ReLU6", "LeakyReLU", "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "Flatten", "Unflatten",
)
# which of those also carry a per-channel constant through unchanged
_OFFSET_SAFE_MODULES = (
    "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "Flatten",
)
_ZERO_ONLY_MODULES = (
    "GELU", "Tanh", "Sigmoid", "SiLU", "Mish", "ELU", "SELU", "CELU", "Softplus", "Softmax",
    "LogSoftmax", "Hardswish", "Hardsigmoid", "Hardtanh",
)
_LINEAR_MODULES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                   "ConvTranspose3d", "LazyLinear")
_BATCH_NORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
                "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")
_FEATURE_NORMS = ("LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm")

_KEEP_FUNCS = {
    "relu", "relu_", "relu6", "leaky_relu", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d",
    "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "flatten", "reshape", "view",
    "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "expand", "expand_as", "dropout",
    "getitem", "chunk", "split", "unbind", "neg", "pad", "clone", "flip", "roll", "narrow",
    "sum", "mean", "t", "float", "to", "type_as", "repeat", "tile", "movedim", "swapaxes", "mT",
}
_OFFSET_SAFE_FUNCS = {"flatten", "reshape", "view", "dropout", "getitem", "contiguous", "clone",
                      "chunk", "split", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                      "adaptive_avg_pool2d", "adaptive_avg_pool3d", "float", "to", "neg", "mean"}
_ZERO_ONLY_FUNCS = {
    "gelu", "tanh", "sigmoid", "silu", "mish", "elu", "selu", "softplus", "softmax", "log_softmax",
    "exp", "log", "sqrt", "rsqrt", "sin", "cos", "erf", "hardswish", "abs", "pow", "square",
}
_ADD_FUNCS = {"add", "add_", "iadd", "sub", "sub_", "isub", "rsub", "cat", "stack", "concat"}
_MUL_FUNCS = {"mul", "mul_", "imul", "matmul", "bmm", "mm", "einsum", "outer"}
_DIV_FUNCS = {"truediv", "div", "div_", "itruediv"}
_SHAPE_FUNCS = {"size", "dim", "numel", "getattr", "len", "arange", "ones", "zeros", "full",
                "new_ones", "new_zeros", "ones_like", "zeros_like", "tril", "triu"}


def _target_name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _flatten_args(args: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flatten_args(a))
        elif isinstance(a, dict):
            out.extend(_flatten_args(a.values()))
        else:
            out.append(a)
    return out


class _Walker:
    """One pass over a traced graph for one candidate parameter."""

    def __init__(self, gm: fx.GraphModule, candidate: torch.Tensor) -> None:
        from torch import fx  # lazy: torch; the analyses import this module on runs without it

        self.gm = gm
        self.candidate = candidate
        self.env: dict[str, Degree] = {}
        self._node_type = fx.Node

    def degree_of(self, arg: Any) -> Degree:
        if isinstance(arg, self._node_type):
            return self.env[arg.name]
        return CONSTANT

    def _param_degree(self, tensor: Any) -> Degree | None:
        if tensor is None:
            return None
        return Degree(HOMOGENEOUS, 1, depends=True, input_free=True) if tensor is self.candidate else CONSTANT

    def run(self) -> Degree:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                return self._output(node)
            self.env[node.name] = self._node(node)
        return CONSTANT

    def _output(self, node: fx.Node) -> Degree:
        degrees = [self.degree_of(a) for a in _flatten_args(node.args)]
        bad = _broken(*degrees)
        if bad is not None:
            return bad
        for d in degrees:
            if d.depends and (d.status != HOMOGENEOUS or d.value != 0):
                if d.status == OFFSET:
                    return Degree(MIXED, 0, depends=True, input_free=False, why="the output carries a bias added to a P-dependent value")
                return d
        return Degree(HOMOGENEOUS, 0, depends=any(d.depends for d in degrees), input_free=False)

    def _node(self, node: fx.Node) -> Degree:
        if node.op == "placeholder":
            return Degree(HOMOGENEOUS, 0, depends=False, input_free=False)
        if node.op == "get_attr":
            obj = _resolve_attr(self.gm, node.target)
            return self._param_degree(obj) or CONSTANT
        inputs = [self.degree_of(a) for a in _flatten_args((node.args, node.kwargs))]
        where = _describe(self.gm, node)
        if node.op == "call_module":
            module = self.gm.get_submodule(node.target)
            owns = any(p is self.candidate for p in module.parameters(recurse=True))
            if not owns and not any(d.depends for d in inputs):
                return Degree(HOMOGENEOUS, 0, depends=False, input_free=all(d.input_free for d in inputs))
            return self._module(module, inputs, where)
        if not any(d.depends for d in inputs):
            return Degree(HOMOGENEOUS, 0, depends=False, input_free=all(d.input_free for d in inputs))
        return self._function(_target_name(node.target).strip("_"), node, where)

    # -- modules -------------------------------------------------------------------------------

    def _module(self, module: nn.Module, inputs: list[Degree], where: str) -> Degree:
        kind = type(module).__name__
        call = _ModuleCall(
            kind=kind,
            where=where,
            x=inputs[0] if inputs else CONSTANT,
            weight=self._param_degree(getattr(module, "weight", None)),
            bias=self._param_degree(getattr(module, "bias", None)),
        )
        rule = _MODULE_RULES.get(kind)
        if rule is not None:
            return rule(call)
        return _not_modelled(inputs, f"{where}: module {kind} is not modelled")

    # -- functions and methods ------------------------------------------------------------------

    def _function(self, name: str, node: fx.Node, where: str) -> Degree:
        call = _Call(
            name=name,
            where=where,
            args=[self.degree_of(a) for a in node.args],
            kwargs={k: self.degree_of(v) for k, v in node.kwargs.items()},
            all_inputs=[self.degree_of(a) for a in _flatten_args((node.args, node.kwargs))],
            given=tuple(a is not None for a in node.args),
        )
        rule = _FUNCTION_RULES.get(name)
        if rule is not None:
            return rule(call)
        return _not_modelled(call.all_inputs, f"{where}: operation {name} is not modelled")


def _not_modelled(inputs: list[Degree], why: str) -> Degree:
    """An operation without a rule: a broken input's degree where it has one, else UNKNOWN."""
    bad = _broken(*inputs)
    if bad is not None:
        return bad
    return Degree(UNKNOWN, 0, depends=True, input_free=False, why=why)


# --------------------------------------------------------------------------- rules for modules


@dataclass(frozen=True)
class _ModuleCall:
    """One call of a leaf module in the graph: its class name, the degree of its first input,
    and those of its own `weight` and `bias` (None where it has none)."""

    kind: str
    where: str
    x: Degree
    weight: Degree | None
    bias: Degree | None


def _linear_module(c: _ModuleCall) -> Degree:
    out = multiply_degrees(c.x, c.weight or CONSTANT, c.where)
    if c.kind.startswith("Conv") and c.x.status == OFFSET:
        return Degree(MIXED, 0, depends=True, input_free=False,
                      why=f"{c.where}: convolution of a biased value (padding breaks it)")
    if c.x.status == OFFSET and out.status == MIXED:  # linear maps carry the constant along
        value = c.x.value + (c.weight.value if c.weight else 0)
        out = Degree(OFFSET, value, depends=True, input_free=False)
    return add_degrees(out, c.bias, c.where) if c.bias is not None else out


def _batch_norm_module(c: _ModuleCall) -> Degree:
    return affine(normalize(c.x, c.where, removes_offset=True), c.weight, c.bias, c.where)


def _feature_norm_module(c: _ModuleCall) -> Degree:
    return affine(normalize(c.x, c.where, removes_offset=False), c.weight, c.bias, c.where)


def _embedding_module(c: _ModuleCall) -> Degree:
    return c.weight or CONSTANT


def _keeping_module(c: _ModuleCall) -> Degree:
    return keep_degree(c.x, c.where, keeps_offset=c.kind in _OFFSET_SAFE_MODULES)


def _zero_only_module(c: _ModuleCall) -> Degree:
    return zero_degree_only(c.x, c.where)


# --------------------------------------------------------------------------- rules for functions


@dataclass(frozen=True)
class _Call:
    """One call of a function in the graph, with the degrees of its arguments."""

    name: str
    where: str
    args: list[Degree]  # positional, in order
    kwargs: dict[str, Degree]
    all_inputs: list[Degree]  # every tensor reached through the arguments, nested ones too
    given: tuple[bool, ...]  # per positional argument: not None

    @property
    def first(self) -> Degree:
        return self.args[0] if self.args else CONSTANT

    def arg(self, index: int, key: str) -> Degree | None:
        """The argument passed as `key` or at position `index`; None where it is absent."""
        if key in self.kwargs:
            return self.kwargs[key]
        if index < len(self.given) and self.given[index]:
            return self.args[index]
        return None


def _linear(c: _Call) -> Degree:
    out = multiply_degrees(c.first, c.arg(1, "weight") or CONSTANT, c.where)
    bias = c.arg(2, "bias")
    return add_degrees(out, bias, c.where) if bias is not None else out


def _batch_norm(c: _Call) -> Degree:  # (input, running_mean, running_var, weight, bias, ...)
    normalized = normalize(c.first, c.where, removes_offset=True)
    return affine(normalized, c.arg(3, "weight"), c.arg(4, "bias"), c.where)


def _feature_norm(c: _Call) -> Degree:  # layer_norm, group_norm: (input, shape or groups, weight, bias, eps)
    normalized = normalize(c.first, c.where, removes_offset=False)
    return affine(normalized, c.arg(2, "weight"), c.arg(3, "bias"), c.where)


def _rms_norm(c: _Call) -> Degree:  # (input, normalized_shape, weight, eps): no shift
    return affine(normalize(c.first, c.where, removes_offset=False), c.arg(2, "weight"), None, c.where)


def _attention(c: _Call) -> Degree:
    q, k, v = (c.args + [CONSTANT] * 3)[:3]
    if q.depends or k.depends:
        return zero_degree_only(multiply_degrees(q, k, c.where), c.where)
    return v


def _sum_of_terms(c: _Call) -> Degree:
    out = c.all_inputs[0]
    for degree in c.all_inputs[1:]:
        out = add_degrees(out, degree, c.where)
    return out


def _product(c: _Call) -> Degree:
    out = c.all_inputs[0]
    for degree in c.all_inputs[1:]:
        out = multiply_degrees(out, degree, c.where)
    return out


def _quotient(c: _Call) -> Degree:
    return multiply_degrees(c.first, c.args[1] if len(c.args) > 1 else CONSTANT, c.where, sign=-1)


def _keeps(c: _Call) -> Degree:
    return keep_degree(c.first, c.where, keeps_offset=c.name in _OFFSET_SAFE_FUNCS)


def _zero_only(c: _Call) -> Degree:
    return zero_degree_only(c.first, c.where)


def _shape_only(c: _Call) -> Degree:
    return Degree(HOMOGENEOUS, 0, depends=False, input_free=c.first.input_free)


def _rules(names: Iterable[str], rule: Callable[[_C], Degree]) -> dict[str, Callable[[_C], Degree]]:
    return dict.fromkeys(names, rule)


# A leaf module's class name → how it maps its input's degree (the groups share no name).
_MODULE_RULES: dict[str, Callable[[_ModuleCall], Degree]] = {
    **_rules(_LINEAR_MODULES, _linear_module),
    **_rules(_BATCH_NORMS, _batch_norm_module),
    **_rules(_FEATURE_NORMS, _feature_norm_module),
    **_rules(("Embedding", "EmbeddingBag"), _embedding_module),
    **_rules(_KEEP_MODULES, _keeping_module),
    **_rules(_ZERO_ONLY_MODULES, _zero_only_module),
}


# A function's name → how it maps its arguments' degrees (the groups share no name).
_FUNCTION_RULES: dict[str, Callable[[_Call], Degree]] = {
    **_rules(_SHAPE_FUNCS, _shape_only),
    **_rules(_ZERO_ONLY_FUNCS, _zero_only),
    **_rules(_KEEP_FUNCS, _keeps),
    **_rules(_DIV_FUNCS, _quotient),
    **_rules(_MUL_FUNCS, _product),
    **_rules(_ADD_FUNCS, _sum_of_terms),
    "scaled_dot_product_attention": _attention,
    "rms_norm": _rms_norm,
    **_rules(("layer_norm", "group_norm"), _feature_norm),
    **_rules(("batch_norm", "instance_norm"), _batch_norm),
    **_rules(("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d"), _linear),
}


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    """Where in the model a node sits, for reasons shown to the user: `layer1.0.bn1 (BatchNorm2d)`, `add_3`."""
    if node.op == "call_module":
        return f"{node.target} ({type(gm.get_submodule(node.target)).__name__})"
    target = _target_name(node.target)
    return node.name if node.name.rstrip("_0123456789") == target.strip("_") else f"{node.name} ({target})"


def _resolve_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------- public entry points


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace the model (torch.fx); standard torch.nn layers stay leaf modules.

    Args:
        model: the model.

    Returns:
        Its traced graph.

    Raises:
        Exception: whatever torch.fx raises for a model it cannot trace.
    """
    from torch import fx  # lazy: torch; the analyses import this module on runs without it

    return fx.symbolic_trace(model)


def verdict_from_degree(param: str, degree: Degree) -> HomogeneityVerdict:
    """The verdict on one parameter from the degree of the network's outputs in it.

    Args:
        param: the parameter's name.
        degree: the outputs' degree (`_Walker.run`).

    Returns:
        INVARIANT for degree 0, NOT_INVARIANT for another degree or a mix, VERDICT_UNKNOWN
        where an operation was not modelled.

    >>> verdict_from_degree("bn.weight", Degree(HOMOGENEOUS, 2, depends=True)).reason
    'the output has degree 2: scaling by c scales it by c^2'
    """
    if degree.status == HOMOGENEOUS and degree.value == 0:
        why = "every output has degree 0 in this parameter" if degree.depends else \
            "the outputs do not depend on this parameter"
        return HomogeneityVerdict(param, INVARIANT, 0, why)
    if degree.status == HOMOGENEOUS:
        return HomogeneityVerdict(param, NOT_INVARIANT, degree.value,
                                  f"the output has degree {degree.value}: scaling by c scales it by c^{degree.value}")
    if degree.status == UNKNOWN:
        return HomogeneityVerdict(param, VERDICT_UNKNOWN, None, degree.why)
    return HomogeneityVerdict(param, NOT_INVARIANT, None, degree.why or "the output is not homogeneous")


def analyze_homogeneity(
    model: nn.Module,
    params: Iterable[str] | None = None,
    *,
    tracer: Callable[[nn.Module], fx.GraphModule] = trace,
) -> dict[str, HomogeneityVerdict]:
    """Per parameter name, the exact verdict from the traced graph.

    A model torch.fx cannot trace gets VERDICT_UNKNOWN for every parameter, with the tracer's
    complaint as the reason (the numerical probe still works on such models).

    Args:
        model: the model.
        params: the parameters to judge; None for every parameter.
        tracer: how the model is traced (`trace`).

    Returns:
        A `HomogeneityVerdict` by parameter name.
    """
    named = dict(model.named_parameters())
    names = list(named) if params is None else [p for p in params if p in named]
    try:
        gm = tracer(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "cannot decide from the graph"
        reason = f"torch.fx could not trace the model: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return {p: HomogeneityVerdict(p, VERDICT_UNKNOWN, None, reason) for p in names}
    traced = dict(gm.named_parameters())
    out: dict[str, HomogeneityVerdict] = {}
    for name in names:
        candidate = traced.get(name)
        if candidate is None:
            out[name] = HomogeneityVerdict(name, VERDICT_UNKNOWN, None, "parameter not found in the traced graph")
            continue
        out[name] = verdict_from_degree(name, _Walker(gm, candidate).run())
    return out


__all__ = [
    "INVARIANT",
    "NOT_INVARIANT",
    "VERDICT_UNKNOWN",
    "Degree",
    "HomogeneityVerdict",
    "add_degrees",
    "affine",
    "analyze_homogeneity",
    "multiply_degrees",
    "normalize",
    "trace",
    "verdict_from_degree",
]
