"""Followers: strategies that make no events of their own and run after another strategy's
events or phase ends (``--then``): lazarus, replay, stability_first."""
