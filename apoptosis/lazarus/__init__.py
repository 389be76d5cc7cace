"""Lazarus: damage a trained model, recover it without data (distilling it towards an anchor on
sequences it generates itself), and the recovery-curve experiment."""
