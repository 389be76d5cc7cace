"""neural-apoptosis: neuron-level evolution inside a char-level transformer.

The weakest MLP neurons die every few hundred steps and are reborn from fit parents; see
docs/architecture.md for the data flow.
"""

__version__ = "0.1.0"
