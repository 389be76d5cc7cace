"""Neuron lineages drawn as biologists draw clones (``lineage.png``): a Muller (fish) plot per
layer, the share of living neurons descending from each large clade over training steps, and a
family tree of the largest lineages.

A clade is everything descended from one root: the ancestor reached through first parents, so a
crossover child (two parents) belongs to its first parent's clade. A neuron born without parents
(a fresh initialisation, e.g. ``cbp`` or ``full_reset``) roots a clade of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

# ``clade`` values of the neurons outside the largest clades (neuron ids start at 1)
LONE = 0  # "other founders": roots no neuron was ever born from
SMALLER = -1  # "smaller clades": descendants of other roots that had children, those roots included
MAX_EVENT_LINES = 60
BACKGROUND = {LONE: ("other founders (childless)", "#e6e6e6"), SMALLER: ("smaller clades", "#a8a8a8")}


def founders(frame: pd.DataFrame) -> pd.Series:
    """Root ancestor (through first parents) of every row of a lineage frame, by pointer jumping."""
    ids = frame["id"].to_numpy(dtype=np.int64)
    first_parent = frame["parent_1"].astype("float64").fillna(frame["id"]).to_numpy(dtype=np.int64)
    root = np.arange(ids.max() + 1)
    root[ids] = first_parent
    while not np.array_equal(jumped := root[root], root):
        root = jumped
    return pd.Series(root[ids], index=frame.index, name="founder")


def _alive_at(frame: pd.DataFrame, step: int) -> pd.Series:
    death = frame["death_step"].astype("float64").fillna(np.inf)
    return (frame["birth_step"] <= step) & (death > step)


def largest_clades(frame: pd.DataFrame, step: int, top: int = 8) -> pd.DataFrame:
    """Per layer, the ``top`` clades with the most living neurons at ``step`` (at least two: a
    founder alone is no clade): layer, founder, living, share of the layer, generations (the
    deepest living generation). Largest first, ties by founder id."""
    alive = frame[_alive_at(frame, step)].assign(founder=founders(frame))
    clades = (
        alive.groupby(["layer", "founder"]).agg(living=("id", "size"), generations=("generation", "max")).reset_index()
    )
    clades["share"] = clades["living"] / clades.groupby("layer")["living"].transform("sum")
    clades = clades[clades["living"] >= 2].sort_values(["layer", "living", "founder"], ascending=[True, False, True])
    return (
        clades.groupby("layer").head(top).reset_index(drop=True)[["layer", "founder", "living", "share", "generations"]]
    )


def clade_counts(frame: pd.DataFrame, steps: Sequence[int], top: int = 8) -> pd.DataFrame:
    """Living neurons per layer and clade at each of ``steps``: columns step, layer, clade,
    count. The clades are the founder ids of the ``largest_clades`` at the last step; the rest
    is summed as ``SMALLER`` (roots that ever had a child) and ``LONE`` (roots that never had
    one). Every (step, layer, clade) has a row, zeros included."""
    steps = np.asarray(sorted(steps), dtype=np.int64)
    kept = largest_clades(frame, int(steps[-1]), top)
    root = founders(frame)
    parents = root[root.duplicated()].unique()
    frame = frame.assign(founder=root.where(root.isin(kept["founder"]), np.where(root.isin(parents), SMALLER, LONE)))
    frames = []
    for layer, members in frame.groupby("layer", sort=True):
        names = [LONE, SMALLER, *kept.loc[kept["layer"] == layer, "founder"]]
        clade = members["founder"].map(names.index).to_numpy()
        # +1 from the first grid step at or after a birth, -1 from the first at or after a death
        delta = np.zeros((len(names), len(steps) + 1), dtype=np.int64)
        np.add.at(delta, (clade, np.searchsorted(steps, members["birth_step"].to_numpy())), 1)
        dead = members["death_step"].notna().to_numpy()
        died = members["death_step"].astype("float64").to_numpy()[dead]
        np.add.at(delta, (clade[dead], np.searchsorted(steps, died)), -1)
        counts = delta.cumsum(axis=1)[:, :-1]
        frames.append(
            pd.DataFrame(
                {
                    "step": np.tile(steps, len(names)),
                    "layer": int(layer),
                    "clade": np.repeat(names, len(steps)),
                    "count": counts.ravel(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _grid(frame: pd.DataFrame, final_step: int) -> list[int]:
    """Every step where a count changes and the step before it, so the areas change sharply."""
    changes = pd.concat([frame["birth_step"], frame["death_step"].dropna()]).astype(int).unique()
    grid = {0, final_step, *changes, *(changes - 1)}
    return sorted(s for s in grid if 0 <= s <= final_step)


def _mark_events(ax: plt.Axes, event_steps: Sequence[int], phase_steps: Sequence[int]) -> None:
    """Dotted grey lines at events (ticks along the top when there are more than
    ``MAX_EVENT_LINES``, e.g. an event every step), solid black at phase ends, as in ``loss.png``."""
    events = sorted(set(event_steps))
    dense = len(events) > MAX_EVENT_LINES
    marks = [(events, 0.96 if dense else 0, "-" if dense else ":", "grey"), (sorted(set(phase_steps)), 0, "-", "black")]
    for steps, bottom, style, color in marks:
        if steps:
            transform = ax.get_xaxis_transform()
            ax.vlines(steps, bottom, 1, transform=transform, colors=color, linestyles=style, linewidth=0.8)


def _muller(ax: plt.Axes, counts: pd.DataFrame, clades: list[int], colors: list, layer: int) -> None:
    """Shares of each clade (``clades``: largest first) in the middle, the smaller clades and
    then the other founders split in halves around them, so clades grow out of the background
    like fish."""
    table = counts.pivot(index="step", columns="clade", values="count")
    shares = table.div(table.sum(axis=1).replace(0, 1), axis=0)
    final = table.iloc[-1]
    edge = [LONE, SMALLER]
    ys = [*(shares[c] / 2 for c in edge), *(shares[c] for c in clades), *(shares[c] / 2 for c in reversed(edge))]
    fills = [*(BACKGROUND[c][1] for c in edge), *colors[: len(clades)], *(BACKGROUND[c][1] for c in reversed(edge))]
    labels = [*(f"{BACKGROUND[c][0]} ({final[c]})" for c in edge), *(f"#{c} ({final[c]})" for c in clades)]
    ax.stackplot(shares.index, ys, colors=fills, labels=labels + [None] * len(edge), linewidth=0)
    ax.set_xlim(shares.index.min(), shares.index.max())
    ax.set_ylim(0, 1)
    ax.set_yticks([0, 0.5, 1])
    ax.set_ylabel(f"layer {layer}\nshare", fontsize=8)
    ax.legend(
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        fontsize=7,
        frameon=False,
        ncol=2 if len(clades) > 5 else 1,
        title="founder (living)",
        title_fontsize=7,
    )


def _tree_rows(members: pd.DataFrame, root: int) -> dict[int, int]:
    """Row of each member of one clade, pre-order with the latest child first, so the vertical
    line from a parent's lifeline to a child never crosses a sibling's lifeline."""
    children = members.sort_values("birth_step", ascending=False).groupby("parent_1")["id"].apply(list)
    rows: dict[int, int] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        rows[node] = len(rows)
        stack.extend(reversed(children.get(node, [])))
    return rows


def _tree_layout(frame: pd.DataFrame, trees: pd.DataFrame, max_nodes: int) -> pd.DataFrame:
    """The members of each clade in ``trees`` with their row (``_tree_rows``; one band per layer,
    a gap between layers) and their clade's rank in its layer. A clade larger than its share of
    ``max_nodes`` keeps its earliest births: ids grow with birth, so every kept neuron's parent
    is kept too."""
    frame = frame.assign(founder=founders(frame)).set_index("id", drop=False)
    per_tree = max(max_nodes // max(len(trees), 1), 1)
    parts = []
    offset = 0
    for _, clades in trees.groupby("layer", sort=True):
        for rank, root in enumerate(clades["founder"]):
            members = frame[frame["founder"] == root].nsmallest(per_tree, "id")
            parts.append(members.assign(row=pd.Series(_tree_rows(members, root)) + offset, rank=rank))
            offset += len(members)
        offset += 2  # a gap between layers
    return pd.concat(parts)


def _family_tree(ax: plt.Axes, nodes: pd.DataFrame, colors: list, final_step: int, cut: bool) -> None:
    """Each neuron a line from its birth step to its death (or the last step) on its own row,
    a vertical line from its parent's row at its birth; the dead faded with hollow dots."""
    x, y = nodes["birth_step"].to_numpy(dtype=float), nodes["row"].to_numpy(dtype=float)
    end = nodes["death_step"].astype("float64").fillna(final_step).to_numpy()
    alive = nodes["death_step"].isna().to_numpy()
    rgb = np.array(colors)[nodes["rank"].to_numpy()]
    parent_row = nodes["parent_1"].astype("float64").map(nodes["row"]).to_numpy()
    child = ~np.isnan(parent_row)
    lives = np.stack([np.column_stack([x, y]), np.column_stack([end, y])], axis=1)
    links = np.stack([np.column_stack([x, parent_row]), np.column_stack([x, y])], axis=1)[child]
    alpha = np.concatenate([np.where(alive, 0.8, 0.25), np.full(child.sum(), 0.5)])
    segment_colors = np.column_stack([np.concatenate([rgb, rgb[child]]), alpha])
    dense = len(nodes) > 200
    ax.add_collection(
        LineCollection(np.concatenate([lives, links]), colors=segment_colors, linewidths=0.5 if dense else 1.0)
    )
    size = 4 if dense else 10
    ax.scatter(x[alive], y[alive], s=size, color=rgb[alive], zorder=3, clip_on=False)
    ax.scatter(x[~alive], y[~alive], s=size, facecolors="none", edgecolors=rgb[~alive], zorder=3, clip_on=False)
    ax.set_xlim(0, final_step)
    ax.set_ylim(y.max() + 0.5, -1)  # roots at the top of each band
    bands = nodes.groupby("layer")["row"].agg(lambda rows: (rows.min() + rows.max()) / 2)
    ax.set_yticks(bands.to_numpy(), [f"layer {layer}" for layer in bands.index], fontsize=8)
    cut_note = f"; each cut to its first {nodes.groupby(['layer', 'rank']).size().max()} births" if cut else ""
    ax.set_title(f"family trees of the largest clades (colours as above{cut_note})", fontsize=9)
    ax.set_xlabel("step (a line from birth to death; faded, hollow: dead)")


def plot_lineage(
    frame: pd.DataFrame,
    final_step: int,
    event_steps: Sequence[int],
    title: str,
    phase_steps: Sequence[int] = (),
    top: int = 8,
    tree_clades: int = 2,
    tree_nodes: int = 400,
) -> plt.Figure:
    """One Muller plot per layer (the ``top`` largest clades at ``final_step``) and, when any
    clade has grown, the family trees of each layer's ``tree_clades`` largest below them, with
    at most ``tree_nodes`` neurons in all so that the rows stay readable."""
    counts = clade_counts(frame, _grid(frame, final_step), top)
    kept = largest_clades(frame, final_step, top)
    trees = kept.groupby("layer").head(tree_clades)
    nodes = _tree_layout(frame, trees, tree_nodes) if len(trees) else None
    n_layers = counts["layer"].nunique()
    heights = [1.4] * n_layers + ([min(6.0, 1.5 + 0.012 * nodes["row"].max())] if nodes is not None else [])
    fig, axes = plt.subplots(
        len(heights),
        1,
        figsize=(10, sum(heights) + 0.8),
        sharex=True,
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    axes = axes[:, 0]
    tab10 = sns.color_palette("tab10")
    colors = [*tab10[:7], *tab10[8:]] if top <= 9 else sns.color_palette("husl", top)  # no grey: that is the background
    for ax, (layer, layer_counts) in zip(axes[:n_layers], counts.groupby("layer", sort=True), strict=True):
        _muller(ax, layer_counts, kept.loc[kept["layer"] == layer, "founder"].tolist(), colors, int(layer))
        _mark_events(ax, event_steps, phase_steps)
    if nodes is not None:
        cut = len(nodes) < founders(frame).isin(trees["founder"]).sum()
        _family_tree(axes[-1], nodes, colors, final_step, cut)
        _mark_events(axes[-1], event_steps, phase_steps)
    else:
        axes[-1].set_xlabel("step")
    births = int((frame["birth_step"] > 0).sum())
    notes = [f"{births} births" if births else "no births: every founder alive, each its own clade"]
    if len(event_steps):
        notes.append(f"{'ticks on top' if len(set(event_steps)) > MAX_EVENT_LINES else 'dotted'}: events")
    if len(phase_steps):
        notes.append("solid: phase ends")
    fig.suptitle(f"{title} ({'; '.join(notes)})", fontsize=10)
    fig.tight_layout()
    return fig
