"""The core: model, data and corpora, config and parameters, the neuron population and its
optimizer updates, fitness, lineage, the strategy interface and the plugin registries. It
imports nothing else of ours, so every other package can lean on it."""
