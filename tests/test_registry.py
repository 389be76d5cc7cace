"""Plugins: decorator registration, wildcard listing, entry points from a separate distribution,
broken plugins skipped with a warning, unknown names listing the known ones."""

from __future__ import annotations

import sys
import textwrap
import warnings

import pytest

from apoptosis.cli.main import main
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.registry import STRATEGIES, PluginWarning, Registry
from apoptosis.core.strategy import Strategy, build_strategy
from apoptosis.training import Trainer
from tests.conftest import tiny_run_config

PLUGIN_MODULE = '''
from dataclasses import dataclass

import torch

from apoptosis.core.params import StrategyParams, param
from apoptosis.core.strategy import Strategy


@dataclass
class Params(StrategyParams):
    every: int = param(7, low=1, high=100, help="steps between events")


class FirstSlotRebirth(Strategy):
    """Every `every` steps, neuron 0 of each layer is reborn from neuron 1."""

    name = "first_slot_rebirth"
    description = "test plugin"
    Params = Params

    def on_step_end(self, ctx):
        if ctx.step % self.params.every == 0:
            ctx.event(self.name, lambda pop: pop.copy_from(
                torch.tensor([0]), torch.tensor([1]), step=ctx.step, mutation_strength=0.1,
                outgoing="zero", generator=ctx.generator, cause="test_plugin"))
'''


@pytest.fixture
def plugin_distribution(tmp_path, monkeypatch):
    """A real installed distribution (dist-info with entry_points.txt) on sys.path, with one
    working strategy plugin and one that fails to import."""
    (tmp_path / "demo_plugin_mod.py").write_text(PLUGIN_MODULE)
    info = tmp_path / "demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [apoptosis.strategies]
            first_slot_rebirth = demo_plugin_mod:FirstSlotRebirth
            broken_plugin = no_such_module_for_apoptosis_tests:Nothing
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    STRATEGIES.forget_plugins()
    yield
    STRATEGIES._entries.pop("first_slot_rebirth", None)
    STRATEGIES.forget_plugins()


def test_decorator_wildcards_and_unknown_names() -> None:
    reg: Registry[type] = Registry("widget", "apoptosis.no_such_group")

    @reg.register
    class Alpha:
        name = "alpha_one"

    @reg.register(name="beta")
    class Beta:
        pass

    assert reg.get("alpha_one") is Alpha and reg.get("beta") is Beta
    assert reg.names("alpha*") == ["alpha_one"] and reg.names() == ["alpha_one", "beta"]
    with pytest.raises(ApoptosisError, match=r"unknown widget 'gamma'; known: alpha_one, beta"):
        reg.get("gamma")
    with pytest.raises(ValueError, match="already registered"):

        @reg.register(name="beta")
        class Other:
            pass


def test_builtins_come_through_the_entry_point_group() -> None:
    assert {"none", "standard"} <= set(STRATEGIES.names())
    assert STRATEGIES.names("stand*") == ["standard"]
    with pytest.raises(ApoptosisError, match="strategies: .*none.*standard; followers .*: lazarus, replay"):
        build_strategy("no_such_strategy")


def test_third_party_plugin_is_found_and_trains(plugin_distribution, tmp_path) -> None:
    strategy = build_strategy("first_slot_rebirth", {"every": 5})
    assert isinstance(strategy, Strategy) and strategy.params.every == 5
    with pytest.raises(ApoptosisError, match=r"every=0 is out of range: allowed 1 <= every <= 100"):
        build_strategy("first_slot_rebirth", {"every": 0})
    trainer = Trainer(tiny_run_config(tmp_path, steps=12, strategy="first_slot_rebirth", every=5),
                      tmp_path / "run", show_progress=False)  # fmt: skip
    summary = trainer.fit()
    assert summary["events"] == 2 and summary["neurons_replaced"] == 4  # 2 events x 2 layers
    causes = {r.death_cause for r in trainer.lineage.records if not r.alive}
    assert causes == {"test_plugin"}


def test_broken_plugin_warns_and_others_still_work(plugin_distribution) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = STRATEGIES.names()
    assert "first_slot_rebirth" in names and "standard" in names and "broken_plugin" not in names
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert len(messages) == 1 and "broken_plugin" in messages[0] and "no_such_module_for_apoptosis_tests" in messages[0]


def test_the_cli_shows_a_broken_plugin_in_one_line(plugin_distribution, monkeypatch, capsys) -> None:
    STRATEGIES.forget_plugins()
    monkeypatch.setattr(sys, "argv", ["apoptosis", "strategies", "--json"])
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main replaces it
    with warnings.catch_warnings(), pytest.raises(SystemExit):
        warnings.simplefilter("always")
        main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: strategy plugin 'broken_plugin'"), lines


def test_lookup_by_name_loads_only_that_plugin(plugin_distribution) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert STRATEGIES.get("first_slot_rebirth").name == "first_slot_rebirth"
    assert not [w for w in caught if issubclass(w.category, PluginWarning)]
