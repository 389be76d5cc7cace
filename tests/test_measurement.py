"""The measurements every comparison stands on: evaluation before surgery, Adam's bias correction
for newborn neurons, the first-order fitness read from the output projection's gradient, and
growth children that do not stay copies of their parents."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from apoptosis.core.config import RunConfig
from apoptosis.core.fitness import FitnessTracker
from apoptosis.core.model import GPT
from apoptosis.core.registry import FITNESS_METRICS, STRATEGIES
from apoptosis.core.strategy import Strategy, TrainingContext
from apoptosis.training import Trainer, read_events
from tests.conftest import make_colony, tiny_model_config, tiny_run_config


class _WipeLayer(Strategy):
    """At step ``eval_interval``, every neuron of layer 0 is replaced by one with large random
    weights: the model after this event is much worse than before it."""

    name = "_wipe_layer"
    uses_fitness = False
    at_step = 10

    def on_step_end(self, ctx: TrainingContext) -> None:
        if ctx.step == self.at_step:
            ctx.event(self.name, self.wipe)

    @staticmethod
    def wipe(pop) -> None:
        if pop.layer != 0:
            return
        g = torch.Generator().manual_seed(0)
        incoming = torch.randn(pop.width, pop.mlp.fc.in_features + 1, generator=g)
        outgoing = torch.randn(pop.width, pop.mlp.proj.out_features, generator=g)
        pop.replace(torch.arange(pop.width), incoming, outgoing, step=10, parents=[()] * pop.width, cause="wipe")


@pytest.fixture
def wipe_strategy():
    STRATEGIES.register(_WipeLayer)
    yield
    STRATEGIES._entries.pop(_WipeLayer.name)


def test_eval_precedes_event(tmp_path: Path, wipe_strategy) -> None:
    reported: list[tuple[int, float]] = []
    config = tiny_run_config(tmp_path, steps=20, strategy=_WipeLayer.name)
    assert config.trainer.eval_interval == _WipeLayer.at_step
    Trainer(config, tmp_path / "wipe", show_progress=False, on_evaluate=lambda s, v: reported.append((s, v))).fit()
    intact = tiny_run_config(tmp_path, steps=20, strategy="none")
    Trainer(intact, tmp_path / "intact", show_progress=False).fit()

    wiped = pd.read_csv(tmp_path / "wipe" / "metrics.csv").set_index("step")
    plain = pd.read_csv(tmp_path / "intact" / "metrics.csv").set_index("step")
    assert wiped.loc[10, "val_loss"] == plain.loc[10, "val_loss"]  # the intact model, same seed
    assert dict(reported)[10] == pytest.approx(plain.loc[10, "val_loss"], abs=1e-6)  # what a pruner sees
    assert wiped.loc[10, "events"] == 1  # the row still counts the event of its step
    event = next(e for e in read_events(tmp_path / "wipe") if e["layer"] == 0)
    assert event["probe_loss_after"] > event["probe_loss_before"] + 0.1  # the surgery's cost is there
    assert wiped.loc[20, "val_loss"] != plain.loc[20, "val_loss"]  # and the wipe did happen


def _adam_updates(beta2: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train a tiny colony for 40 steps, replace neuron slots 0..3 of layer 0 by fresh neurons, then
    train ``steps`` more; return the newborn rows' update at each step, and the updates a freshly
    constructed AdamW makes when fed the same gradients."""
    config = RunConfig()
    config.trainer.beta2 = beta2
    config.trainer.weight_decay = 0.1
    c = make_colony(run_config=config)
    c.train_steps(40)
    pop = c.populations[0]
    slots = torch.arange(4)
    g = torch.Generator().manual_seed(1)
    incoming = torch.randn(4, pop.mlp.fc.in_features + 1, generator=g) * 0.02
    outgoing = torch.randn(4, pop.mlp.proj.out_features, generator=g) * 0.02
    pop.replace(slots, incoming, outgoing, step=40, parents=[()] * 4, cause="test")

    fc = pop.mlp.fc.weight
    newborn = torch.nn.Parameter(fc.detach()[slots].clone())
    fresh = torch.optim.AdamW([newborn], lr=c.optimizer.param_groups[0]["lr"], betas=(0.9, beta2),
                              weight_decay=0.1)  # fmt: skip
    got, want = [], []
    batches = torch.Generator().manual_seed(2)
    vocab, T = c.model.config.vocab_size, c.model.config.block_size
    for _ in range(steps):
        x = torch.randint(vocab, (4, T), generator=batches)
        _, loss = c.model(x, x)
        loss.backward()
        newborn.grad = fc.grad[slots].clone()
        before = fc.detach().clone()
        c.optimizer_step()
        reference_before = newborn.detach().clone()
        fresh.step()
        got.append((fc.detach()[slots] - before[slots]).clone())
        want.append(newborn.detach() - reference_before)
    return torch.stack(got), torch.stack(want)


@pytest.mark.parametrize("beta2", [0.99, 0.999])
def test_newborn_adam_update_size(beta2: float) -> None:
    got, want = _adam_updates(beta2, steps=30)
    ratio = got.norm(dim=(1, 2)) / want.norm(dim=(1, 2))
    assert torch.all((ratio - 1).abs() < 0.05), ratio  # as a fresh AdamW's, step by step
    assert (got - want).abs().max() < 1e-4 * want.abs().max()  # element by element, to float rounding


def test_newborn_correction_leaves_old_rows_untouched() -> None:
    """The same training with and without the per-neuron correction moves every old row alike."""
    c = make_colony()
    c.train_steps(20)
    pop = c.populations[0]
    g = torch.Generator().manual_seed(5)
    incoming = torch.randn(1, pop.mlp.fc.in_features + 1, generator=g) * 0.02
    outgoing = torch.randn(1, pop.mlp.proj.out_features, generator=g) * 0.02
    pop.replace(torch.tensor([0]), incoming, outgoing, step=20, parents=[()], cause="test")
    assert pop.updates.young().tolist() == [0]
    x = torch.randint(20, (4, 8), generator=torch.Generator().manual_seed(3))
    _, loss = c.model(x, x)
    loss.backward()
    before = pop.mlp.fc.weight.detach().clone()
    state = {k: v.clone() for k, v in c.optimizer.state[pop.mlp.fc.weight].items()}
    pop.updates.before_step()
    c.optimizer.step()
    uncorrected = pop.mlp.fc.weight.detach().clone()
    pop.updates.after_step()
    after = pop.mlp.fc.weight.detach()
    assert torch.equal(after[1:], uncorrected[1:])  # old rows: exactly the optimizer's step
    assert not torch.equal(after[0], uncorrected[0])  # the newborn: its own bias correction
    assert state["step"] + 1 == c.optimizer.state[pop.mlp.fc.weight]["step"]
    assert not torch.equal(before[1:], after[1:])


def test_growth_children_diverge() -> None:
    """growth_only's default mutation breaks the Net2Net symmetry: children's incoming rows are
    not their parents' after 50 steps, while the loss at birth is unchanged within 1e-4."""
    from apoptosis.strategies.growth_only import GrowthOnlyParams

    c = make_colony()
    c.train_steps(10)
    x = torch.randint(20, (8, 8), generator=torch.Generator().manual_seed(4))
    c.model.eval()
    with torch.no_grad():
        loss_before = c.model(x, x)[1].item()
    strength = GrowthOnlyParams().mutation_strength
    assert strength > 0
    parents = torch.tensor([0, 3, 5, 7])
    g = torch.Generator().manual_seed(0)
    for pop in c.populations:
        pop.grow(4, step=10, parent_slots=parents, mutation_strength=strength, generator=g)
    with torch.no_grad():
        loss_after = c.model(x, x)[1].item()
    assert abs(loss_after - loss_before) < 1e-4
    c.model.train()
    c.train_steps(50, seed=9)
    for pop in c.populations:
        w = pop.incoming()
        children, of_parents = w[-4:], w[parents]
        assert torch.all((children - of_parents).abs().amax(dim=1) > 1e-4)


def test_taylor_matches_proj_grad() -> None:
    torch.manual_seed(0)
    model = GPT(tiny_model_config(n_layer=3))
    model.blocks[1].mlp.gate.mask[[2, 5]] = 0.0  # a masked neuron scores 0 both ways
    seen: dict[int, torch.Tensor] = {}
    for i, block in enumerate(model.blocks):

        def hook(module, inputs, h, i=i):
            h.retain_grad()
            seen[i] = h

        block.mlp.gate.register_forward_hook(hook)
    x = torch.randint(20, (4, 8), generator=torch.Generator().manual_seed(1))
    _, loss = model(x, x.roll(1, dims=1))
    loss.backward()
    signed, unsigned = FITNESS_METRICS.get("taylor_signed")(), FITNESS_METRICS.get("taylor")()
    for layer, block in enumerate(model.blocks):
        h, g = seen[layer].detach(), seen[layer].grad
        expected = -(h * g).sum(dim=(0, 1))
        assert expected.abs().max() > 1e-6  # a real signal, with both signs
        assert (expected > 0).any() and (expected < 0).any()
        tolerance = 1e-5 * expected.abs().max().item()
        from_grad = signed.weight_grad_value(block.mlp)
        assert torch.allclose(from_grad, expected, rtol=1e-4, atol=tolerance)
        assert torch.allclose(signed.step_value(h, g), expected)
        assert torch.equal(unsigned.weight_grad_value(block.mlp), from_grad.abs())
        assert torch.equal(unsigned.step_value(h, g), signed.step_value(h, g).abs())
    assert signed.weight_grad_value(model.blocks[1].mlp)[[2, 5]].eq(0).all()

    tracker = FitnessTracker(model, "taylor", ema_decay=0.9)
    tracker.attach()
    assert tracker._handles == []  # no hooks: training pays nothing per forward pass
    tracker.after_backward()
    for layer, block in enumerate(model.blocks):
        assert torch.allclose(tracker.scores(layer), unsigned.weight_grad_value(block.mlp))
    weights = [w.clone() for w in tracker.weights]
    with tracker.paused():
        tracker.after_backward()
    assert all(torch.equal(a, b) for a, b in zip(weights, tracker.weights, strict=True))
    tracker.after_backward()  # attached again after the pause
    assert not torch.equal(weights[0], tracker.weights[0])
    tracker.detach()
    weights = [w.clone() for w in tracker.weights]
    tracker.after_backward()
    assert torch.equal(weights[0], tracker.weights[0])

    hooked = FitnessTracker(model, "grad_activation")
    hooked.attach()
    assert len(hooked._handles) == 3
    before = hooked.weights[0].clone()
    hooked.after_backward()  # a hook metric ignores it
    assert torch.equal(before, hooked.weights[0])
    hooked.detach()


def test_event_probes_change_what_is_measured_never_the_training(tmp_path: Path) -> None:
    """``layers`` probes before the event and after each layer, ``event`` only around the whole
    event (the same two ends), ``off`` not at all; the weights train the same in every mode."""
    from apoptosis.analysis.report import events_frame

    runs = {}
    for probes in ("layers", "event", "off"):
        config = tiny_run_config(tmp_path, steps=20, interval=10, maturity=1, prune_rate=0.25)
        config.trainer.event_probes = probes
        Trainer(config, tmp_path / probes, show_progress=False).fit()
        runs[probes] = (read_events(tmp_path / probes), pd.read_csv(tmp_path / probes / "metrics.csv"))
    layers, event, off = (runs[p][0] for p in ("layers", "event", "off"))
    assert len(layers) == len(event) == len(off) == 2  # one event (step 10) on 2 layers
    for p in ("event", "off"):
        pd.testing.assert_frame_equal(
            runs[p][1].drop(columns="tokens_per_s"), runs["layers"][1].drop(columns="tokens_per_s")
        )
    assert all(e["probe_loss_after"] is not None for e in layers)
    for number in {e["event"] for e in layers}:
        full = [e for e in layers if e["event"] == number]
        ends = [e for e in event if e["event"] == number]
        assert ends[0]["probe_loss_before"] == pytest.approx(full[0]["probe_loss_before"])
        assert ends[-1]["probe_loss_after"] == pytest.approx(full[-1]["probe_loss_after"])
        assert ends[0]["probe_loss_after"] is None and ends[-1]["probe_loss_before"] is None
    assert all(e["probe_loss_before"] is None and e["probe_loss_after"] is None for e in off)
    summaries = {p: pd.read_json(tmp_path / p / "summary.json", typ="series") for p in runs}
    assert summaries["event"]["mean_event_disruption"] == pytest.approx(summaries["layers"]["mean_event_disruption"])
    assert summaries["off"]["mean_event_disruption"] is None
    assert events_frame([tmp_path / "off"])["surgery"].isna().all()


def test_probe_passes_are_measurement_not_training_time(tmp_path, monkeypatch) -> None:
    """An event's probe passes (here made slow) count as measurement, like evaluation: tokens/s
    are not charged for them, while the surgery itself is training time."""
    from apoptosis.training.evaluation import Evaluator

    probe = Evaluator.probe_loss

    def slow_probe(self, corpus: str) -> float:
        time.sleep(0.3)
        return probe(self, corpus)

    monkeypatch.setattr(Evaluator, "probe_loss", slow_probe)
    config = tiny_run_config(tmp_path, steps=20, interval=10, maturity=0)  # one event: 1 + 2 layers' probes
    trainer = Trainer(config, tmp_path / "run", show_progress=False)
    trainer.fit()
    assert trainer.totals.events == 1
    assert trainer.probe_time_s >= 0.9
    assert trainer.totals.train_time_s < trainer.probe_time_s  # 20 tiny steps take far less than the probes


def test_two_cohorts_track_fresh_adamw_on_every_neuron_tensor_through_their_coming_of_age() -> None:
    """With beta1 0.5 and beta2 0.6 a neuron is young for 32 updates. Two cohorts born 15 steps
    apart, followed for 60 steps (both grow up, so the young set is found again), keep every row
    of ``fc.weight``, ``fc.bias`` and ``proj.weight`` equal to what a fresh AdamW started at their
    birth makes of the same gradients; the founders' rows are left to the tensor's AdamW."""
    config = RunConfig()
    t = config.trainer
    t.beta1, t.beta2, t.weight_decay = 0.5, 0.6, 0.1
    c = make_colony(run_config=config)
    c.train_steps(10)
    pop = c.populations[0]
    tensors = [(pop.mlp.fc.weight, 0, 0.1), (pop.mlp.fc.bias, 0, 0.0), (pop.mlp.proj.weight, 1, 0.1)]
    g = torch.Generator().manual_seed(5)
    cohorts = []

    def born(slots: torch.Tensor, step: int) -> None:
        incoming = torch.randn(len(slots), pop.mlp.fc.in_features + 1, generator=g) * 0.02
        outgoing = torch.randn(len(slots), pop.mlp.proj.out_features, generator=g) * 0.02
        pop.replace(slots, incoming, outgoing, step=step, parents=[()] * len(slots), cause="test")
        fresh = [torch.nn.Parameter(p.detach().index_select(d, slots).clone()) for p, d, _ in tensors]
        groups = [{"params": [q], "weight_decay": wd} for q, (_, _, wd) in zip(fresh, tensors, strict=True)]
        cohorts.append((slots, fresh, torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2))))

    batches = torch.Generator().manual_seed(6)
    vocab, T = c.model.config.vocab_size, c.model.config.block_size
    for step in range(10, 70):
        if step in (10, 25):
            born(torch.arange(4) + (0 if step == 10 else 4), step)
        x = torch.randint(vocab, (4, T), generator=batches)
        _, loss = c.model(x, x)
        loss.backward()
        for slots, fresh, _ in cohorts:
            for q, (p, d, _) in zip(fresh, tensors, strict=True):
                q.grad = p.grad.index_select(d, slots).clone()
        founders_before = pop.mlp.fc.weight.detach()[8:].clone()
        c.optimizer_step()
        for slots, fresh, optimizer in cohorts:
            optimizer.step()
            for q, (p, d, _) in zip(fresh, tensors, strict=True):
                torch.testing.assert_close(p.detach().index_select(d, slots), q.detach(), rtol=1e-5, atol=1e-6)
        assert not torch.equal(pop.mlp.fc.weight.detach()[8:], founders_before)
    assert len(pop.updates.young()) == 0  # both cohorts grew up (steps 42 and 57)
