"""The mixture-of-experts FFN of nomic-embed-text-v2-moe (``shared/spec/nomic-v2-moe.md`` section 6.4).

Parameter names and shapes are the original checkpoint's (``mlp.router.layer.weight`` ``(E, D)``,
``mlp.experts.mlp.w1`` / ``w2`` ``(E * F, D)``, expert axis outer, and one ``mlp.experts.bias`` ``(D,)``), so a
hub folder loads as it is. :class:`~multimodal_embed.models.nomic_bert.NomicBertModel` puts this layer on the
blocks its config marks (``moe_every_n_layers``); everything else (embeddings, attention, RoPE, post-LN blocks,
packing) is NomicBERT's own.

The original computes, for tokens ``h`` ``(T, D)``: ``p = softmax(h Wr^T)`` in fp32 over all experts, the top-k
of ``p`` (not renormalised), ``out = sum_k w_k * gelu(h W1[e_k]^T) W2[e_k] + bias`` with the bias added once.
Every position is routed, padding included. :meth:`NomicMoELayer.forward` computes each expert only on the
tokens routed to it (tokens grouped by expert, one gather and two matmuls per expert, the weighted outputs
gathered back and summed per token);
:meth:`NomicMoELayer.forward_dense` is the naive form (every expert on every token, masked), kept as the
reference the tests and ``benchmarks/text_throughput.py`` compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NomicMoELayer", "Routing"]


class Routing:
    """One layer's routing of ``T`` tokens: ``probs`` ``(T, E)`` fp32 softmax over all experts, ``experts``
    ``(T, K)`` the top-k expert ids (descending probability) and ``weights`` ``(T, K)`` their probabilities, not
    renormalised, in the activation dtype."""

    def __init__(self, probs: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor):
        self.probs = probs
        self.weights = weights
        self.experts = experts


class _Router(nn.Module):
    def __init__(self, hidden: int, num_experts: int):
        super().__init__()
        self.layer = nn.Linear(hidden, num_experts, bias=False)


class _ExpertWeights(nn.Module):
    def __init__(self, num_experts: int, inner: int, hidden: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts * inner, hidden))  # (E, F, D) flattened: W1[e] is (F, D)
        self.w2 = nn.Parameter(torch.empty(num_experts * inner, hidden))  # (E, F, D) too: NOT (E, D, F)
        nn.init.normal_(self.w1, std=0.02)
        nn.init.normal_(self.w2, std=0.02)


class _Experts(nn.Module):
    def __init__(self, num_experts: int, inner: int, hidden: int):
        super().__init__()
        self.mlp = _ExpertWeights(num_experts, inner, hidden)
        self.bias = nn.Parameter(torch.zeros(hidden))  # one bias for all experts, added once after the sum


class NomicMoELayer(nn.Module):
    """Token-choice top-k mixture of ``num_experts`` GELU MLPs (``hidden -> inner -> hidden``, no per-expert bias)."""

    def __init__(self, hidden: int, inner: int, num_experts: int, top_k: int):
        super().__init__()
        self.hidden, self.inner, self.num_experts, self.top_k = hidden, inner, num_experts, top_k
        self.router = _Router(hidden, num_experts)
        self.experts = _Experts(num_experts, inner, hidden)

    def route(self, h: torch.Tensor) -> Routing:
        """The router on tokens ``h`` ``(T, D)``: softmax over every expert in fp32, top-k, no renormalisation."""
        probs = self.router.layer(h).softmax(dim=-1, dtype=torch.float32)
        weights, experts = probs.topk(self.top_k, dim=-1)
        return Routing(probs, weights.to(h.dtype), experts)

    def _expert_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.num_experts, self.inner, self.hidden)
        return self.experts.mlp.w1.view(shape), self.experts.mlp.w2.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., D)`` -> ``(..., D)``: each expert runs once, on the tokens routed to it."""
        h = x.reshape(-1, self.hidden)
        routing = self.route(h)
        w1, w2 = self._expert_weights()
        k = self.top_k
        flat = routing.experts.reshape(-1)  # (T * K,): token t's k-th choice at t * K + k
        order = flat.argsort(stable=True)  # grouped by expert; within an expert, in token order (as the original)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()  # one host sync per layer
        grouped = h[order // k]  # one gather: each (token, choice)'s input, grouped by expert
        ys = torch.empty_like(grouped)  # ... and its expert's output
        start = 0
        for e, n in enumerate(counts):
            if n:
                part = slice(start, start + n)
                torch.mm(F.gelu(grouped[part] @ w1[e].t()), w2[e], out=ys[part])
                start += n
        ys.mul_(routing.weights.reshape(-1)[order, None])
        # back to (token, choice) order by one gather (index_add_ is a serial scatter on CPU), then the K weighted
        # outputs of each token are summed (for K = 2 the same sum as the original's accumulation in expert order)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.shape[0], device=order.device)
        out = ys[inverse].view(-1, k, self.hidden).sum(1)
        return (out + self.experts.bias).view(x.shape)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The naive form: every expert on every token, weighted by a ``(T, E)`` mask that is zero outside each
        token's top-k. Same result as :meth:`forward` up to matmul rounding, ``E / K`` times the expert work."""
        h = x.reshape(-1, self.hidden)
        routing = self.route(h)
        w1, w2 = self._expert_weights()
        gate = torch.zeros(h.shape[0], self.num_experts, dtype=h.dtype, device=h.device)
        gate.scatter_(1, routing.experts, routing.weights)
        out = torch.zeros_like(h)
        for e in range(self.num_experts):
            out += gate[:, e:e + 1] * (F.gelu(h @ w1[e].t()) @ w2[e])
        return (out + self.experts.bias).view(x.shape)
