"""Per-layer Gram matrices of per-row Jacobians, without materialising the whole-model Jacobian.

For outputs ``f(X) ∈ R^{n x κ}`` and layer ``l`` with parameters θ_l, the layer NTK is
``Θ^l = J_l J_lᵀ`` with ``J_l = ∂ vec f / ∂θ_l``: one row per (sample s, output o), rows ordered
sample-major (``r = s·κ + o``). :func:`layer_grams` returns every layer's ``(nκ x nκ)`` Θ^l in float64.

How it is made fast (strategy ``"auto"``):

1. *Per-sample independence.* In eval mode a transformer has no interaction between samples (LayerNorm,
   per-sample attention, no BatchNorm statistics), so the gradient of ``Σ_s f_{s,o}`` restricted to
   sample s is the gradient of ``f_{s,o}`` alone. One backward pass per output o (all κ of them batched
   into one ``torch.autograd.grad(..., is_grads_batched=True)``) therefore yields the output-gradients
   ``g_{(s,o),t}`` of every row at every hooked module, instead of one pass per row.
2. *Factored Jacobians.* For a linear module ``y = x Wᵀ + b`` over T tokens, the row's weight-Jacobian is
   ``Σ_t g_{(s,o),t} x_{s,t}ᵀ``. Per module the cheaper of two exact forms is used:
   (a) materialise the per-row weight gradients in chunks of output channels and accumulate ``J Jᵀ``;
   (b) the token kernel: ``Θ_{rr'} = Σ_{t,t'} (g_{r,t}·g_{r',t'}) (x_{s,t}·x_{s',t'})``, computed as
   ``<G_r, K_{ss'} G_{r'}>`` with the (T x T) input kernel ``K_{ss'} = X_s X_{s'}ᵀ``.
   The bias contributes ``(Σ_t g_r)·(Σ_t g_r')``. LayerNorm's weight contributes
   ``(Σ_t g_r ⊙ x̂_{s,t})·(Σ_t g_r' ⊙ x̂_{s',t})`` with x̂ the normalised input, its bias like a linear bias.
3. *Generic fallback.* Any other own parameter (convolutions, custom modules, a module called with a
   batch dimension it reshapes away) gets exact per-row gradients from batched backward passes with
   one-hot row cotangents, which does not rely on per-sample independence.

Strategy ``"rows"`` uses only the generic fallback: slow, but a straightforward reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from f3ocus_core.importance.outputs import check_finite

OutputFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
NamedParams = list[tuple[str, nn.Parameter]]

STRATEGIES: tuple[str, ...] = ("auto", "rows")

#: Largest number of float elements one working tensor may have (64 MiB of float32).
CHUNK_ELEMENTS = 1 << 24


@dataclass
class _Capture:
    """One hooked module: its kind, its layer, its own parameters, and what it saw in the forward."""

    module: nn.Module
    kind: str
    layer: int
    params: dict[str, nn.Parameter]
    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    valid: bool = True

    def hook(self, module: nn.Module, args: tuple, output: object) -> None:
        if args and torch.is_tensor(args[0]) and torch.is_tensor(output):
            self.inputs.append(args[0].detach())
            self.outputs.append(output)
        else:
            self.valid = False


def _kind(module: nn.Module, local_names: set[str]) -> str | None:
    """``"linear"``/``"layernorm"`` when the fast path handles these parameters of ``module``."""
    if type(module) is nn.Linear and local_names <= {"weight", "bias"}:
        return "linear"
    if type(module) is nn.LayerNorm and local_names <= {"weight", "bias"}:
        return "layernorm"
    return None


def _plan(
    model: nn.Module, layer_params: list[NamedParams], strategy: str
) -> tuple[list[_Capture], list[list[nn.Parameter]]]:
    """Split each layer's own parameters into hooked fast-path modules and generic parameters."""
    modules = dict(model.named_modules())
    by_module: dict[str, tuple[int, dict[str, nn.Parameter]]] = {}
    for layer, params in enumerate(layer_params):
        for name, param in params:
            module_name, _, local = name.rpartition(".")
            by_module.setdefault(module_name, (layer, {}))[1][local] = param
    captures: list[_Capture] = []
    generic: list[list[nn.Parameter]] = [[] for _ in layer_params]
    for module_name, (layer, params) in by_module.items():
        module = modules.get(module_name)
        kind = _kind(module, set(params)) if module is not None and strategy == "auto" else None
        if kind is None or module is None:
            generic[layer].extend(params.values())
        else:
            captures.append(_Capture(module=module, kind=kind, layer=layer, params=params))
    return captures, generic


def layer_grams(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    layer_params: list[NamedParams],
    output_fn: OutputFn,
    strategy: str = "auto",
) -> list[torch.Tensor]:
    """Θ^l for every layer: float64 ``(nκ x nκ)`` Grams of the per-row Jacobians of ``output_fn``.

    The model must already be in scoring state (eval mode, own parameters requiring grad, autograd on;
    see :func:`~f3ocus_core.importance.context.scoring_state`). Nothing is written to ``.grad``.

    Memory: the Grams hold ``L·(nκ)²`` float64 numbers and the output-gradients ``nκ`` copies of
    every hooked module's output, so keep nκ in the low thousands (the ``"logits"`` reduction already
    reduces κ to the head's width; see :mod:`.outputs`).

    Raises
    ------
    ValueError
        If the outputs are not a finite ``(n, κ)`` tensor.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown Gram strategy {strategy!r}; choose one of {STRATEGIES}.")
    captures, generic = _plan(model, layer_params, strategy)
    handles = [cap.module.register_forward_hook(cap.hook) for cap in captures]
    try:
        outputs = output_fn(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    if outputs.dim() != 2:
        raise ValueError(f"Scoring outputs must be (n, κ); got shape {tuple(outputs.shape)}.")
    check_finite(outputs, "scoring outputs")
    n, kappa = outputs.shape
    rows = n * kappa
    for cap in captures:
        cap.valid = (
            cap.valid
            and bool(cap.outputs)
            and all(x.shape[0] == n and y.shape[0] == n and y.requires_grad for x, y in zip(cap.inputs, cap.outputs))
        )
        if not cap.valid:
            generic[cap.layer].extend(cap.params.values())
    fast = [cap for cap in captures if cap.valid]

    grams = [torch.zeros(rows, rows, dtype=torch.float64) for _ in layer_params]
    if fast:
        _add_fast_grams(outputs, fast, grams, keep_graph=any(generic))
    for layer, params in enumerate(generic):
        if params:
            grams[layer] += _generic_gram(outputs, params)
    return grams


def _output_gradients(outputs: torch.Tensor, targets: list[torch.Tensor], keep_graph: bool) -> list[torch.Tensor]:
    """For every target, the gradients of ``Σ_s f_{s,o}`` for each output o: ``(κ, *target.shape)``."""
    n, kappa = outputs.shape
    cotangents = torch.zeros(kappa, n, kappa, dtype=outputs.dtype, device=outputs.device)
    cotangents[torch.arange(kappa), :, torch.arange(kappa)] = 1.0
    if kappa == 1:
        grads = torch.autograd.grad(
            outputs, targets, grad_outputs=cotangents[0], retain_graph=keep_graph, allow_unused=True
        )
        grads = tuple(None if g is None else g.unsqueeze(0) for g in grads)
    else:
        grads = torch.autograd.grad(
            outputs,
            targets,
            grad_outputs=cotangents,
            is_grads_batched=True,
            retain_graph=keep_graph,
            allow_unused=True,
        )
    return [
        torch.zeros((kappa, *t.shape), dtype=t.dtype, device=t.device) if g is None else g
        for g, t in zip(grads, targets)
    ]


def _add_fast_grams(
    outputs: torch.Tensor, captures: list[_Capture], grams: list[torch.Tensor], keep_graph: bool
) -> None:
    """Add every fast-path module's Gram to its layer's Θ (see the module docstring)."""
    n, kappa = outputs.shape
    targets = [y for cap in captures for y in cap.outputs]
    grads = _output_gradients(outputs, targets, keep_graph)
    position = 0
    for cap in captures:
        calls = len(cap.outputs)
        cap_grads = grads[position : position + calls]
        position += calls
        g = _join_calls([gr.reshape(kappa, n, -1, gr.shape[-1]) for gr in cap_grads], dim=2)
        g = g.transpose(0, 1).reshape(n * kappa, g.shape[2], g.shape[3])
        x = _join_calls([xi.reshape(n, -1, xi.shape[-1]) for xi in cap.inputs], dim=1)
        if cap.kind == "linear":
            grams[cap.layer] += linear_gram(g, x, kappa, cap.params)
        else:
            assert isinstance(cap.module, nn.LayerNorm), "_kind gives 'layernorm' only for nn.LayerNorm"
            grams[cap.layer] += _layernorm_gram(g, cap.inputs, cap.module, kappa, cap.params)
        cap.inputs.clear()
        cap.outputs.clear()


def _join_calls(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    """A module called several times acts on all its calls' tokens: join them along ``dim``."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


def _self_gram(rows: torch.Tensor) -> torch.Tensor:
    """``rows rowsᵀ`` in float64 for a ``(R, d)`` tensor."""
    return (rows @ rows.T).double()


def linear_form(n: int, kappa: int, tokens: int, d_in: int, d_out: int) -> str:
    """The cheaper exact form of a linear weight's Gram: ``"rows"`` (a) or ``"tokens"`` (b).

    Multiply-adds with ``R = nκ``: (a) per-row weight gradients and their Gram,
    ``R·T·d_out·d_in + R²·d_out·d_in``; (b) the token kernel (see :func:`_token_gram`),
    ``(n·T)²·d_in + n(n+1)/2 · (κ·T²·d_out + κ²·T·d_out)``. (a) wins for few outputs and many tokens,
    (b) for many outputs (κ > T) or small layers.
    """
    rows = n * kappa
    cost_rows = rows * tokens * d_out * d_in + rows * rows * d_out * d_in
    pairs = n * (n + 1) // 2
    cost_tokens = (n * tokens) ** 2 * d_in + pairs * (kappa * tokens**2 + kappa**2 * tokens) * d_out
    return "tokens" if cost_tokens < cost_rows else "rows"


def linear_gram(
    g: torch.Tensor,
    x: torch.Tensor,
    kappa: int,
    params: dict[str, nn.Parameter] | set[str],
    form: str | None = None,
) -> torch.Tensor:
    """Gram of a linear module from output-gradients ``g`` (nκ, T, d_out) and inputs ``x`` (n, T, d_in).

    ``params`` names which of ``"weight"``/``"bias"`` to include; ``form`` forces ``"rows"`` or
    ``"tokens"`` (default: :func:`linear_form` picks the cheaper).
    """
    rows, tokens, d_out = g.shape
    n, _, d_in = x.shape
    gram = torch.zeros(rows, rows, dtype=torch.float64)
    if "bias" in params:
        gram += _self_gram(g.sum(dim=1))
    if "weight" not in params:
        return gram
    form = form or linear_form(n, kappa, tokens, d_in, d_out)
    if form == "tokens":
        return gram + _token_gram(g, x, kappa)
    per_sample = g.reshape(n, kappa, tokens, d_out).transpose(-1, -2)
    block = max(1, CHUNK_ELEMENTS // max(1, rows * d_in))
    x_expanded = x.unsqueeze(1)
    for start in range(0, d_out, block):
        jac = torch.matmul(per_sample[:, :, start : start + block], x_expanded)
        gram += _self_gram(jac.reshape(rows, -1))
    return gram


def _token_gram(g: torch.Tensor, x: torch.Tensor, kappa: int) -> torch.Tensor:
    """Weight Gram via the token kernel: ``Θ_{(s,o),(s',o')} = <G_{s,o}, K_{ss'} G_{s',o'}>_F``.

    ``G_{s,o}`` is the (T x d_out) output-gradient of row (s, o) and ``K_{ss'} = X_s X_{s'}ᵀ`` the
    (T x T) kernel of the two samples' inputs; this equals ``Σ_{t,t'} (g_{r,t}·g_{r',t'})
    (x_{s,t}·x_{s',t'})``. Only the blocks with s' ≥ s are computed; the rest by symmetry.
    """
    rows, tokens, d_out = g.shape
    n = x.shape[0]
    per_sample = g.reshape(n, kappa, tokens, d_out)
    flat = per_sample.reshape(n, kappa, tokens * d_out)
    x_flat = x.reshape(n * tokens, -1)
    kernel = (x_flat @ x_flat.T).reshape(n, tokens, n, tokens)
    gram = torch.empty(rows, rows, dtype=torch.float64)
    for s in range(n):
        mixed = torch.matmul(kernel[s, :, s:].transpose(0, 1).unsqueeze(1), per_sample[s:])
        block = (flat[s] @ mixed.reshape(-1, tokens * d_out).T).double()
        gram[s * kappa : (s + 1) * kappa, s * kappa :] = block
        gram[s * kappa :, s * kappa : (s + 1) * kappa] = block.T
    return gram


def _layernorm_gram(
    g: torch.Tensor,
    inputs: list[torch.Tensor],
    module: nn.LayerNorm,
    kappa: int,
    params: dict[str, nn.Parameter],
) -> torch.Tensor:
    """Gram of a LayerNorm's weight (``Σ_t g ⊙ x̂``) and bias (``Σ_t g``) rows."""
    rows = g.shape[0]
    n = inputs[0].shape[0]
    width = math.prod(module.normalized_shape)
    normed = torch.cat(
        [F.layer_norm(xi, module.normalized_shape, eps=module.eps).reshape(n, -1, width) for xi in inputs],
        dim=1,
    )
    g = g.reshape(rows, -1, width)
    gram = torch.zeros(rows, rows, dtype=torch.float64)
    if "bias" in params:
        gram += _self_gram(g.sum(dim=1))
    if "weight" in params:
        per_sample = g.reshape(n, kappa, -1, width) * normed.unsqueeze(1)
        gram += _self_gram(per_sample.sum(dim=2).reshape(rows, width))
    return gram


def _generic_gram(outputs: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    """Exact Gram from per-row gradients (one-hot row cotangents, batched), in chunks of rows."""
    n, kappa = outputs.shape
    rows = n * kappa
    width = sum(p.numel() for p in params)
    chunk = max(1, min(rows, CHUNK_ELEMENTS // max(1, width)))
    jac = torch.empty(rows, width, dtype=outputs.dtype)
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        cotangents = torch.zeros(stop - start, rows, dtype=outputs.dtype, device=outputs.device)
        cotangents[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        grads = torch.autograd.grad(
            outputs,
            params,
            grad_outputs=cotangents.reshape(stop - start, n, kappa),
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
        jac[start:stop] = torch.cat(
            [
                torch.zeros(stop - start, p.numel(), dtype=outputs.dtype)
                if gr is None
                else gr.reshape(stop - start, -1)
                for gr, p in zip(grads, params)
            ],
            dim=1,
        )
    return _self_gram(jac)
