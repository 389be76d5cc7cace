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
from apoptosis.core.errors import ApoptosisError

INIT_STD = 0.02  # std of every Linear and Embedding weight at initialisation (GPT-2)


def residual_std(n_layer: int) -> float:
    """Initial std of the residual projections (``attn.out``, ``mlp.proj``): GPT-2's
    ``INIT_STD / sqrt(2 n_layer)``."""
    return INIT_STD / math.sqrt(2 * n_layer)


class KVCache:
    """One attention layer's keys and values of the positions seen so far (generation only), in
    tensors of the block's length allocated at the first call: extending writes in place."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.length = capacity, 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k``, ``v`` (B, H, T, C/H); the keys and values of every position so far."""
        if self.k is None or self.v is None:
            B, H, _, D = k.shape
            self.k, self.v = k.new_empty(B, H, self.capacity, D), v.new_empty(B, H, self.capacity, D)
        end = self.length + k.size(2)
        if end > self.capacity:
            raise ValueError(f"the key/value cache holds {self.capacity} positions; {end} were asked for")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``cache`` (generation only): this layer's keys and values of the earlier positions,
        extended in place; ``x`` then holds the new positions only."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, C/H)
        if cache is not None:
            k, v = cache.extend(k, v)  # (B, H, T_all, C/H)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=T > 1, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, C/H)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


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

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class OnePositionDecoder:
    """``GPT.last_logits`` for one new position, as functional calls on the model's weights,
    gathered once: at one position every module call, attribute lookup and view costs more than
    its arithmetic (EXPERIMENT_LOG.md has the speeds). The model must not change
    while it is used, and its dropout must be inactive; tests hold its logits to the forward's."""

    def __init__(self, model: GPT) -> None:
        c = model.config
        self.heads, self.head_dim = c.n_head, c.d_model // c.n_head
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.wte, self.wpe, self.head = model.wte.weight, model.wpe.weight, model.head.weight
        self.final_norm = (model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)
        self.blocks = [
            (
                (b.ln_1.weight, b.ln_1.bias, b.ln_1.eps), b.attn.qkv.weight, b.attn.qkv.bias, b.attn.out.weight,
                b.attn.out.bias, (b.ln_2.weight, b.ln_2.bias, b.ln_2.eps), b.mlp.fc.weight, b.mlp.fc.bias,
                b.mlp.act, b.mlp.gate.mask, b.mlp.proj.weight, b.mlp.proj.bias,
            )
            for b in model.blocks
        ]  # fmt: skip

    def step(self, tokens: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
        """(B, vocab) logits after one more token per row, ``tokens`` (B,), at the next position of
        ``caches`` (filled by ``last_logits``), which it extends."""
        B, H, D = tokens.size(0), self.heads, self.head_dim
        C = H * D
        x = self.wte[tokens] + self.wpe[caches[0].length]  # (B, C)
        for cache, (ln_1, qkv_w, qkv_b, out_w, out_b, ln_2, fc_w, fc_b, act, mask, proj_w, proj_b) in zip(
            caches, self.blocks, strict=True
        ):
            q, k, v = F.linear(F.layer_norm(x, (C,), *ln_1), qkv_w, qkv_b).view(B, 3, H, 1, D).unbind(1)  # (B, H, 1, D)
            keys, values = cache.extend(k, v)  # (B, H, position + 1, D)
            att = torch.bmm(q.reshape(B * H, 1, D), keys.flatten(0, 1).transpose(1, 2))  # (B H, 1, position + 1)
            y = torch.bmm(att.mul_(self.scale).softmax(dim=-1), values.flatten(0, 1))  # (B H, 1, D)
            x = x + F.linear(y.view(B, C), out_w, out_b)
            hidden = act(F.linear(F.layer_norm(x, (C,), *ln_2), fc_w, fc_b)) * mask  # (B, width)
            x = x + F.linear(hidden, proj_w, proj_b)
        return F.linear(F.layer_norm(x, (C,), *self.final_norm), self.head)


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

    def empty_caches(self) -> list[KVCache]:
        """One empty key/value cache per block, each holding up to a block of positions."""
        return [KVCache(self.config.block_size) for _ in self.blocks]

    def last_logits(self, idx: torch.Tensor, caches: list[KVCache] | list[None], start: int) -> torch.Tensor:
        """(B, vocab) logits after the last of ``idx`` (B, T), the tokens at positions
        ``start..start+T-1``, the earlier ones being in ``caches`` (one per block; None: no cache)."""
        T = idx.size(1)
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block, cache in zip(self.blocks, caches, strict=True):
            x = block(x, cache)
        return self.head(self.ln_f(x[:, -1, :]))  # (B, vocab): the head for the last position only

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after the context ``idx`` (B, T); returns (B, T + new).

        With ``use_cache`` each new token costs one position's forward pass: keys and values of
        the earlier positions are kept. Positions are absolute, so when the context fills the
        block, generation goes on from its last ``block_size // 2`` tokens, encoded afresh at
        positions 0.. (a context shift); the context a token sees is then between half and the
        whole block. Without the cache every token re-reads the last ``block_size`` tokens (a
        sliding window, ``block_size`` positions per token). Sampling draws from ``generator``
        on its own device (a CPU generator gives the same text on any device); without one, on
        the logits' device from torch's global generator.
        Runs in inference mode (less per-operation overhead); the result is an ordinary tensor,
        usable as training input."""
        return self._generate(idx, max_new_tokens, temperature, top_k, generator, use_cache).clone()

    @torch.inference_mode()
    def _generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        generator: torch.Generator | None,
        use_cache: bool,
    ) -> torch.Tensor:
        block = self.config.block_size
        B, T0 = idx.shape
        out = torch.empty(B, T0 + max_new_tokens, dtype=idx.dtype, device=idx.device)  # (B, T0 + new)
        out[:, :T0] = idx
        caches: list[KVCache] = []
        finite = torch.ones((), dtype=torch.bool, device=idx.device)  # read once at the end, not per token
        decoder = OnePositionDecoder(self) if not self.training or self.config.dropout == 0 else None  # no dropout
        for n in range(T0, T0 + max_new_tokens):
            if not use_cache:
                logits = self.last_logits(out[:, max(0, n - block) : n], [None] * len(self.blocks), 0)
            elif caches and caches[0].length < block and decoder is not None:
                logits = decoder.step(out[:, n - 1], caches)
            elif caches and caches[0].length < block:
                logits = self.last_logits(out[:, n - 1 : n], caches, caches[0].length)
            else:  # first token, or the block is full: encode the (last part of the) context afresh
                context = out[:, max(0, n - (block if not caches else block // 2)) : n]
                caches = self.empty_caches()
                logits = self.last_logits(context, caches, 0)
            tokens, drawn_from_finite = self._sample(logits, temperature, top_k, generator)
            out[:, n : n + 1] = tokens.to(out.device)
            finite &= drawn_from_finite.to(finite.device)
        if not bool(finite):
            raise ApoptosisError("the model's next-token probabilities are not finite (NaN weights?): cannot sample")
        return out

    @staticmethod
    def _sample(
        logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1) token ids drawn from ``logits`` (B, vocab) on the generator's device, and
        whether every probability they were drawn from was finite (a 0-d bool tensor).

        The exponential race: argmax of p_i / E_i with E_i ~ Exp(1) picks i with probability p_i,
        as ``torch.multinomial`` does, without the input checks that cost more than the draw."""
        if temperature != 1.0:
            logits = logits / max(temperature, 1e-6)
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits = logits.masked_fill(logits < v[:, [-1]], -float("inf"))
        probs = F.softmax(logits, dim=-1)
        if generator is not None and generator.device != probs.device:
            probs = probs.to(generator.device)
        race = torch.empty_like(probs).exponential_(1.0, generator=generator).clamp_min_(torch.finfo(probs.dtype).tiny)
        return (probs / race).argmax(dim=-1, keepdim=True), torch.isfinite(probs).all()


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
