"""Continual training through phases of corpora: the experiment that runs methods against fresh
baselines, and the measures of forgetting, plasticity and reconsolidation."""
