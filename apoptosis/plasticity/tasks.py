"""The benchmark's tasks: random languages whose best possible loss is known exactly.

A task is an order-k Markov chain over a vocabulary of V symbols whose transition rows are drawn
from a symmetric Dirichlet(alpha): a new language each time, with nothing to carry over but the
skill of reading the last k tokens. Its entropy rate H = sum_s pi(s) H(P(. | s)) (pi: the chain's
stationary distribution over k-grams) is the loss of the best possible model, so the loss a
network reaches is measured as its excess over that floor. Every stream is sampled from the
stationary distribution, so every token, not only late ones, has that floor.

The random-label variant (memorisation) keeps a task's token stream as input but gives every
position a uniformly random target: nothing can be generalised, only memorised (the random-label
tasks of Lyle et al. 2023, "Understanding plasticity in neural networks"). Its floor is computed
from the stream itself (``memorisation_floor``).

Tasks are a pure function of (seed, index): every method sees the same tasks for a seed.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import entropy

from apoptosis.core.data import CharDataset, CharVocab
from apoptosis.core.errors import ApoptosisError

SYMBOLS = string.ascii_lowercase + string.ascii_uppercase + string.digits  # token i is written SYMBOLS[i]
MAX_CONTEXTS = 2**20  # V ** k: the transition table has this many rows at most
TASK_TOKENS = 2**16  # training tokens of a Markov task (and an eighth of that for validation)
CHAINS = 8  # a stream is this many independent runs of the chain, joined end to end
TRAIN, PROBE = 0, 1  # the two kinds of task a seed draws: trained on, and held out for probes


@dataclass(frozen=True)
class MarkovChain:
    """An order-``order`` chain: ``table[s]`` is the next-token distribution after the k-gram
    with index s = sum_i x_i V^(k-1-i), and ``stationary`` the k-grams' stationary distribution."""

    vocab: int
    order: int
    table: np.ndarray  # (V^k, V)
    stationary: np.ndarray  # (V^k,)

    @classmethod
    def draw(cls, vocab: int, order: int, alpha: float, rng: np.random.Generator) -> MarkovChain:
        table = rng.dirichlet(np.full(vocab, alpha), size=vocab**order)
        return cls(vocab, order, table, stationary_distribution(table, vocab, order))

    def entropy_rate(self) -> float:
        """H = sum_s pi(s) H(P(. | s)), nats per token."""
        return float(self.stationary @ entropy(self.table, axis=1))

    def block_entropy(self, length: int) -> float:
        """Entropy of ``length`` <= k consecutive tokens of the stationary chain."""
        k, v = self.order, self.vocab
        return float(entropy(self.stationary.reshape(v ** (k - length), v**length).sum(axis=0)))

    def window_optimum(self, block_size: int) -> float:
        """The best possible mean loss over a training window of ``block_size`` positions:
        position t sees t + 1 tokens, so while t + 1 < k its floor is H(X_{t+2} | X_1..X_{t+1}) =
        H_{t+2} - H_{t+1} (block entropies) rather than the entropy rate."""
        rate = self.entropy_rate()
        floors = [
            self.block_entropy(t + 2) - self.block_entropy(t + 1) if t + 1 < self.order else rate
            for t in range(block_size)
        ]
        return float(np.mean(floors))

    def sample(self, length: int, rng: np.random.Generator, chains: int = CHAINS) -> np.ndarray:
        """``length`` tokens: ``chains`` independent runs, each started from the stationary
        distribution, joined end to end. A window across one of the joins sees tokens it cannot
        predict; with 8 chains in 65536 tokens that costs about 1e-4 nats of the floor."""
        k, v = self.order, self.vocab
        per_chain = -(-length // chains)
        state = rng.choice(v**k, size=chains, p=self.stationary)
        out = np.empty((chains, k + per_chain), dtype=np.int64)
        for i in range(k):
            out[:, i] = state // v ** (k - 1 - i) % v
        cumulative = np.cumsum(self.table, axis=1)
        uniforms = rng.random((per_chain, chains))
        for j in range(per_chain):
            token = np.minimum((cumulative[state] < uniforms[j, :, None]).sum(axis=1), v - 1)
            out[:, k + j] = token
            state = state % v ** (k - 1) * v + token
        return out.reshape(-1)[:length]


def stationary_distribution(table: np.ndarray, vocab: int, order: int, tolerance: float = 1e-13) -> np.ndarray:
    """The stationary distribution over k-grams, by power iteration (a Dirichlet chain has every
    transition possible, so it mixes: about 50 iterations for V = 32, k = 2, alpha = 0.1)."""
    states = vocab**order
    pi = np.full(states, 1.0 / states)
    for _ in range(100_000):
        joint = (pi[:, None] * table).reshape(vocab, states // vocab, vocab)  # (x_1, x_2..x_k, next)
        following = joint.sum(axis=0).reshape(-1)  # over (x_2..x_k, next)
        if np.abs(following - pi).sum() < tolerance:
            return following / following.sum()
        pi = following
    raise ApoptosisError(f"the stationary distribution of an order-{order} chain did not converge")


def memorisation_floor(stream: np.ndarray, labels: np.ndarray, block_size: int) -> float:
    """The lowest mean loss any model can reach on random training windows of a random-label task:
    at each window position t, the entropy of the targets among the windows whose first t + 1
    tokens are the same (a context seen once can be memorised: 0). Windows start uniformly at
    0 .. len(stream) - block_size - 1, as ``CharDataset.batch`` draws them."""
    stream, labels = np.asarray(stream, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    starts = len(stream) - block_size
    vocab = int(max(stream.max(), labels.max())) + 1
    context = np.zeros(starts, dtype=np.int64)  # per window start: an id of the tokens seen so far
    total = 0.0
    for t in range(block_size):
        _, context = np.unique(context * vocab + stream[t : t + starts], return_inverse=True)
        if context.max() + 1 == starts:  # every context unique here, and so at every later position
            break
        pairs, counts = np.unique(context * vocab + labels[t : t + starts], return_counts=True)
        seen = np.bincount(context)[pairs // vocab]  # windows with the pair's context
        total += float(-(counts * np.log(counts / seen)).sum()) / starts
    return total / block_size


@dataclass(frozen=True)
class Task:
    index: int
    order: int
    entropy_rate: float  # nats per token (log V for random labels: what no memorisation gets)
    optimal_loss: float  # the best mean loss over training windows: the floor of excess_loss
    dataset: CharDataset


@dataclass(frozen=True)
class TaskFamily:
    """What the benchmark's options fix for every task; ``task(seed, index)`` draws one."""

    vocab: int = 32
    orders: tuple[int, ...] = (2,)
    alpha: float = 0.1
    random_labels: int = 0  # 0: Markov languages; N: N stream positions with random targets
    block_size: int = 64

    def validate(self) -> None:
        """One line naming the option for a family that cannot be drawn."""
        if not 2 <= self.vocab <= len(SYMBOLS):
            raise ApoptosisError(f"--vocab must be in 2..{len(SYMBOLS)}, got {self.vocab}")
        if not self.orders or min(self.orders) < 1 or self.vocab ** max(self.orders) > MAX_CONTEXTS:
            raise ApoptosisError(
                f"--orders must list Markov orders k >= 1 with vocab^k <= {MAX_CONTEXTS} contexts, got "
                f"{','.join(map(str, self.orders)) or 'none'} with --vocab {self.vocab}"
            )
        if not self.alpha > 0:
            raise ApoptosisError(f"--alpha (the Dirichlet concentration) must be > 0, got {self.alpha}")
        if self.random_labels < 0 or 0 < self.random_labels <= self.block_size + 1:
            raise ApoptosisError(
                f"--random-labels must be 0 or more than model.block_size + 1 = {self.block_size + 1} "
                f"positions, got {self.random_labels}"
            )
        if TASK_TOKENS // 8 <= self.block_size + 1:
            raise ApoptosisError(f"model.block_size must be below {TASK_TOKENS // 8 - 1}, got {self.block_size}")

    def task(self, seed: int, index: int, kind: int = TRAIN) -> Task:
        """Task ``index`` (0-based) of ``seed``: the same for every method; ``kind`` PROBE draws
        the held-out task a probe trains on."""
        rng = np.random.default_rng([seed, index, kind])
        order = int(rng.choice(self.orders))
        chain = MarkovChain.draw(self.vocab, order, self.alpha, rng)
        vocab = CharVocab(list(SYMBOLS[: self.vocab]))
        if not self.random_labels:
            train, val = chain.sample(TASK_TOKENS, rng), chain.sample(TASK_TOKENS // 8, rng)
            dataset = CharDataset(vocab, torch.from_numpy(train), torch.from_numpy(val), self.block_size)
            return Task(index, order, chain.entropy_rate(), chain.window_optimum(self.block_size), dataset)
        stream = chain.sample(self.random_labels, rng)
        labels = rng.integers(self.vocab, size=self.random_labels)
        tokens, targets = torch.from_numpy(stream), torch.from_numpy(labels)
        dataset = CharDataset(vocab, tokens, tokens, self.block_size, targets={"train": targets, "val": targets})
        floor = memorisation_floor(stream, labels, self.block_size)
        return Task(index, order, float(np.log(self.vocab)), floor, dataset)
