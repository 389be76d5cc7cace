"""``apoptosis plasticity``: the loss-of-plasticity benchmark (see docs/plasticity.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apoptosis.cli.app import CompileOption, SetOption, app, console, default_name, distinct_names, with_compile
from apoptosis.core.errors import ApoptosisError


@app.command()
def plasticity(
    methods: Annotated[
        str, typer.Option(help="comma-separated strategies, e.g. none,cbp,redo,shrink_perturb,l2_init,full_reset")
    ],
    tasks: Annotated[int, typer.Option(help="tasks in sequence, on the same weights")] = 50,
    steps_per_task: Annotated[int, typer.Option(help="training steps on each task")] = 300,
    seeds: Annotated[int, typer.Option(help="seeds 1..K for every method (a seed fixes its tasks)")] = 3,
    workers: Annotated[int, typer.Option(help="(method, seed) cells in parallel processes")] = 1,
    name: Annotated[str | None, typer.Option(help="benchmark folder name (default: time)")] = None,
    runs_dir: Annotated[Path, typer.Option(help="folder holding run folders")] = Path("runs"),
    shard: Annotated[
        str | None, typer.Option(help="I/N: run every N-th (method, seed) cell from the I-th (needs --name)")
    ] = None,
    activation: Annotated[str, typer.Option(help="the MLP's nonlinearity: gelu or relu")] = "gelu",
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on the matrices")] = 0.0,
    lr: Annotated[float, typer.Option(help="learning rate, constant")] = 3e-3,
    vocab: Annotated[int, typer.Option(help="symbols of every task's language")] = 32,
    orders: Annotated[str, typer.Option(help="Markov orders; each task draws one, e.g. 1,2,3")] = "2",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration of the transition rows")] = 0.1,
    random_labels: Annotated[
        int, typer.Option(help="N > 0: memorisation: N positions per task with random targets")
    ] = 0,
    probe_steps: Annotated[int, typer.Option(help="steps the probe trains on a held-out task")] = 500,
    probe_every: Annotated[int, typer.Option(help="probe every this many tasks (and at the last); 0: no probe")] = 1,
    last: Annotated[int, typer.Option(help="the table averages over this many last tasks (at most --tasks)")] = 10,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    tuned: Annotated[
        str | None,
        typer.Option(
            help="search study folders (comma-separated, or a folder of them): each method runs with "
            "its study's best parameters"
        ),
    ] = None,
    set_: SetOption = None,
    compile_: CompileOption = False,
) -> None:
    """A sequence of random languages on the same weights, every method on the same seeds and
    tasks: excess loss per task, probe loss against a fresh network, dormant fraction, effective
    rank and weight norm. plasticity.csv, a table of the last tasks and plasticity.png; the same
    command again continues a stopped benchmark."""
    from apoptosis.plasticity.benchmark import Settings, parse_shard, run_benchmark
    from apoptosis.plasticity.report import results_tables
    from apoptosis.plasticity.tuning import read_tuned

    if shard is not None and name is None:
        raise ApoptosisError("--shard needs --name: every shard writes into the same folder")
    if last < 1:
        raise ApoptosisError(f"--last must be >= 1, got {last}")
    order_list = distinct_names(orders, "--orders")
    if not all(order.isdigit() for order in order_list):
        raise ApoptosisError(f"--orders must list whole numbers, e.g. 1,2,3, got {orders!r}")
    method_names = tuple(distinct_names(methods, "--methods"))
    tuned_folders = [Path(p) for p in distinct_names(tuned, "--tuned")] if tuned else []
    settings = Settings(
        methods=method_names,
        tasks=tasks,
        steps_per_task=steps_per_task,
        seeds=seeds,
        activation=activation,
        weight_decay=weight_decay,
        lr=lr,
        vocab=vocab,
        orders=tuple(int(order) for order in order_list),
        alpha=alpha,
        random_labels=random_labels,
        probe_steps=probe_steps,
        probe_every=probe_every,
        device=device,
        sets=tuple(with_compile(set_, compile_) or ()),
        tuned=read_tuned(tuned_folders, method_names),
    )
    name = name or default_name("plasticity")
    out_dir = runs_dir / name
    for method, param, value in settings.tuned:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        console.print(f"tuned: {method} {param}={shown}")
    frame, cells = run_benchmark(settings, out_dir, console, parse_shard(shard), workers)
    done = frame.groupby(["method", "seed"]).ngroups if len(frame) else 0
    if done:
        kind = f"random labels ({random_labels} positions)" if random_labels else f"order {orders} Markov"
        title = (f"{name}: {kind}, vocab {vocab}, {activation}, weight decay {weight_decay:g}, lr {lr:g}, "
                 f"{steps_per_task} steps per task, probe {probe_steps} steps")  # fmt: skip
        for table in results_tables(frame, last, title):
            console.print(table)
    if done < cells:
        console.print(f"{done} of {cells} (method, seed) cells are finished; the table covers those")
    console.print(f"Folder: {out_dir} (plasticity.csv, plasticity.png, one folder per method and seed)")
