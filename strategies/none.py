"""``none``: the baseline. No neuron dies, and no fitness is tracked (so it costs nothing)."""

from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import Strategy


@register_strategy
class NoApoptosis(Strategy):
    name = "none"
    description = "baseline: plain training, no neuron dies or is born"
    uses_fitness = False
