"""A GPT-style character model whose MLP hidden units are the neurons that live and die.

Classes in dependency order: attention, MLP (the neuron population's home), block, GPT.
Each block's MLP may have its own width, so growth and shrinkage need no other change.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from apoptosis.core.config import ModelConfig

INIT_STD = 0.02  # std of every Linear and Embedding weight at initialisation (GPT-2)


def residual_std(n_layer: int) -> float:
    """Initial std of the residual projections (``attn.out``, ``mlp.proj``): GPT-2's
    ``INIT_STD / sqrt(2 n_layer)``."""
    return INIT_STD / math.sqrt(2 * n_layer)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, C/H)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, C/H)
        return self.out(y.transpose(1, 2).contiguous().view(B, T, C))


class NeuronGate(nn.Module):
    """Multiplies the hidden activation by a 0/1 mask per neuron. Its output is *the* hidden
    activation h that fitness hooks watch, so a masked neuron has zero activation and gradient."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.mask


class MLP(nn.Module):
    """``fc: d_model -> width``, GELU (or ReLU: ``model.activation``), ``proj: width -> d_model``.

    Neuron i is row i of ``fc`` (with its bias) and column i of ``proj``. ``gate`` applies the
    neuron mask (saved with the model) and is where fitness hooks see h and its gradient.
    """

    def __init__(self, d_model: int, width: int, dropout: float, activation: str = "gelu") -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, width)
        self.act = nn.ReLU() if activation == "relu" else nn.GELU()
        self.proj = nn.Linear(width, d_model)
        self.gate = NeuronGate(width)
        self.drop = nn.Dropout(dropout)

    @property
    def width(self) -> int:
        return self.fc.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gate(self.act(self.fc(x)))  # (B, T, width)
        return self.drop(self.proj(h))  # (B, T, d_model)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, mlp_width: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config.d_model, mlp_width, config.dropout, config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        if config.vocab_size < 1:
            raise ValueError("model.vocab_size must be set from the corpus before building the model")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.block_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, w) for w in config.widths())
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: scale residual projections by depth
            for p in (block.attn.out.weight, block.mlp.proj.weight):
                nn.init.normal_(p, mean=0.0, std=residual_std(config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    def mlp_widths(self) -> list[int]:
        return [block.mlp.width for block in self.blocks]

    def current_config(self) -> ModelConfig:
        """The config with the MLP widths as they are now (after growth or shrinkage)."""
        return replace(self.config, mlp_widths=self.mlp_widths())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after the context ``idx`` (B, T)."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]
            logits, _ = self(context)
            logits = logits[:, -1, :] / max(temperature, 1e-6)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1).cpu()
            nxt = torch.multinomial(probs, 1, generator=generator).to(idx.device)
            idx = torch.cat((idx, nxt), dim=1)
        return idx


@torch.no_grad()
def fresh_parameters(model: GPT, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A new draw of the initial distribution of every parameter of ``model``, by name as in
    ``model.named_parameters()`` (the head is tied to ``wte``), at the model's current widths.

    As ``GPT.__init__`` initialises them: Linear and Embedding weights N(0, ``INIT_STD``), the
    residual projections (``attn.out``, ``mlp.proj``) N(0, ``residual_std(n_layer)``), biases 0,
    LayerNorm weights 1 and biases 0. The draws are made on the CPU from ``generator``, in
    ``named_parameters`` order, so a seeded generator gives the same values on any device; each
    tensor comes back on its parameter's device and dtype. The model is not changed.
    """
    residual = {id(p) for block in model.blocks for p in (block.attn.out.weight, block.mlp.proj.weight)}
    owners: dict[int, tuple[nn.Module, str]] = {}
    for module in model.modules():
        for attr, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), (module, attr))
    fresh = {}
    for name, p in model.named_parameters():
        module, attr = owners[id(p)]
        if isinstance(module, nn.LayerNorm):
            value = torch.ones(p.shape) if attr == "weight" else torch.zeros(p.shape)
        elif attr == "bias":
            value = torch.zeros(p.shape)
        elif isinstance(module, nn.Linear | nn.Embedding):
            std = residual_std(model.config.n_layer) if id(p) in residual else INIT_STD
            value = torch.randn(p.shape, generator=generator) * std
        else:
            raise TypeError(f"no initial distribution is known for parameter {name} of a {type(module).__name__}")
        fresh[name] = value.to(device=p.device, dtype=p.dtype)
    return fresh


def frozen_copy(model: GPT) -> GPT:
    """A copy in eval mode with no gradients: a fixed teacher while ``model`` trains on."""
    copied = copy.deepcopy(model).eval()
    copied.requires_grad_(False)
    return copied
