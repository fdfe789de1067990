"""Small matplotlib helpers the notebooks share."""

from __future__ import annotations


def plot_curve(history: dict, title: str, ylabel: str = "training loss", key: str = "loss"):
    """Line plot of a ``{"step": [...], key: [...]}`` history; returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(history["step"], history[key], marker=".")
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_before_after(values: dict[str, tuple[float, float]], title: str):
    """Grouped bars: for each metric name, its (before, after) values."""
    import matplotlib.pyplot as plt

    names = list(values)
    fig, ax = plt.subplots(figsize=(6, 3))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [values[n][0] for n in names], width=0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [values[n][1] for n in names], width=0.4, label="after")
    ax.set_xticks(list(xs), names)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_score_histograms(chosen: list[float], rejected: list[float], title: str = "reward scores on held-out pairs"):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    bins = 30
    ax.hist(chosen, bins=bins, alpha=0.6, label="chosen")
    ax.hist(rejected, bins=bins, alpha=0.6, label="rejected")
    ax.set(xlabel="reward r(prompt, answer)", ylabel="answers", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_rl_runs(runs: dict[str, list[dict]], keys=("score", "kl", "answer_tokens"), title: str = "PPO"):
    """One panel per metric in ``keys``; one line per run (``{"run name": metrics-per-step}``)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    for ax, key in zip(axes, keys):
        for name, history in runs.items():
            ax.plot([h["step"] for h in history], [h[key] for h in history], marker=".", label=name)
        ax.set(xlabel="PPO step", title=key)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_beta_tradeoff(runs: list[dict], title: str = "PPO: the KL coefficient beta"):
    """What a method's beta buys (seed-study runs, ``rl_seeds.committed_runs(method, sweep=True)``): one column per
    beta, a dot per run: reward-score gain (over every judged prompt, as the verdict judges it), recall change on the RL prompts and on the held-out questions, KL to SFT."""
    import matplotlib.pyplot as plt

    from .judging import judged_gain

    betas = sorted({r["beta"] for r in runs})
    panels = (("reward-score gain", lambda r: judged_gain(r)["mean"]),
              ("recall change, RL prompts", lambda r: r["recall_after"] - r["recall_before"]),
              ("recall change, held-out questions", lambda r: r["recall_heldout_after"] - r["recall_heldout_before"]),
              ("KL to SFT (nats)", lambda r: r["kl_to_reference"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3))
    for ax, (name, value) in zip(axes, panels):
        for x, beta in enumerate(betas):
            values = [value(r) for r in runs if r["beta"] == beta]
            ax.scatter([x] * len(values), values, color="C0", alpha=0.6)
            ax.plot([x - 0.2, x + 0.2], [sum(values) / len(values)] * 2, color="C3")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xticks=range(len(betas)), xticklabels=[f"{b:g}" for b in betas], xlabel="beta", title=name)
        ax.grid(alpha=0.3)
    fig.suptitle(title + " (dots: runs; red: their mean)")
    fig.tight_layout()
    return fig


def plot_method_comparison(rows: list[dict], keys=("reward score", "win rate vs SFT", "KL to SFT", "key-fact recall"),
                           label_key: str = "method"):
    """One bar panel per column in ``keys``; one bar per row (``alignment.comparison_rows`` by
    method, or ``compare.evaluate_stages`` with ``label_key="stage"``)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3))
    names = [row[label_key] for row in rows]
    for ax, key in zip(axes, keys):
        ax.bar(names, [row[key] or 0.0 for row in rows], color=[f"C{i}" for i in range(len(rows))])
        ax.set_title(key)
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def _box(ax, xy, text, color):
    ax.text(*xy, text, ha="center", va="center", fontsize=9, zorder=3,
            bbox=dict(boxstyle="round,pad=0.4", facecolor=color, edgecolor="black", linewidth=0.8))


def _arrow(ax, start, end, gap=(0.0, 0.0)):
    """An arrow from ``start`` to ``end``, each moved ``gap`` (x) towards the other: from a box's edge, not its centre."""
    direction = 1 if end[0] >= start[0] else -1
    start, end = (start[0] + direction * gap[0], start[1]), (end[0] - direction * gap[1], end[1])
    ax.annotate("", xy=end, xytext=start, zorder=1,
                arrowprops=dict(arrowstyle="-|>", color="black", lw=1, shrinkA=2, shrinkB=2))


def plot_pipeline(pipeline=None, headlines: dict[str, str] | None = None, title: str | None = None):
    """The stages as boxes in columns by depth, an arrow from each stage to the stages that start from it
    (``pipeline.PIPELINE``: the same list the command line and the fingerprints read); ``headlines`` adds a line
    of measurements under a stage's name (``report.stage_headlines``)."""
    import matplotlib.pyplot as plt

    from .pipeline import PIPELINE

    stages = {s.name: s for s in (pipeline or PIPELINE)}
    depth: dict[str, int] = {}
    for name, stage in stages.items():  # PIPELINE lists every stage after its inputs
        depth[name] = 1 + max((depth[i] for i in stage.inputs), default=-1)
    columns: dict[int, list[str]] = {}
    for name, d in depth.items():
        columns.setdefault(d, []).append(name)
    position = {name: (d, (len(names) - 1) / 2 - k) for d, names in columns.items() for k, name in enumerate(names)}
    fig, ax = plt.subplots(figsize=(11, 4.4) if headlines else (9, 3.6))
    for name, stage in stages.items():
        for source in stage.inputs:
            _arrow(ax, position[source], position[name], gap=(0.3, 0.3))
    for name, stage in stages.items():
        color = "#fde2c8" if stage.aligns else "#d8e8f8" if stage.trains else "#e8e8e8"
        label = name.upper() + (" (optional)" if stage.optional else "")
        _box(ax, position[name], label + (f"\n{headlines[name]}" if headlines and name in headlines else ""), color)
    ax.set_xlim(-0.6, max(columns) + 0.6)
    ax.set_ylim(min(y for _, y in position.values()) - 0.6, max(y for _, y in position.values()) + 0.6)
    ax.set_title(title or "The pipeline: each stage starts from the models its arrows come from (orange: judged against SFT)")
    ax.axis("off")
    fig.tight_layout()
    return fig


def plot_ppo_roles():
    """The four roles of one PPO step: which network gives which quantity, and what each quantity becomes."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8))
    roles = {"policy\n(SFT + LoRA, trains)": ((0, 3), "#fde2c8"), "reference\n(adapter off, frozen)": ((0, 2), "#e8e8e8"),
             "value head\n(on the policy, trains)": ((0, 1), "#fde2c8"), "reward model\n(notebook 03, frozen)": ((0, 0), "#e8e8e8")}
    quantities = {"answers, log pi": (2.2, 3), "log pi_ref": (2.2, 2), "values V(s_t)": (2.2, 1), "score r(x, y)": (2.2, 0)}
    for (name, (xy, color)), (label, qxy) in zip(roles.items(), quantities.items()):
        _box(ax, xy, name, color)
        _box(ax, qxy, label, "white")
        _arrow(ax, xy, qxy, gap=(0.85, 0.7))
    _box(ax, (4.3, 2.5), "rewards per token\nr_t = -beta KL_t (+ score at EOS)", "#d8e8f8")
    _box(ax, (4.3, 0.5), "GAE: advantages A_t,\nreturns R_t", "#d8e8f8")
    _box(ax, (6.3, 1.5), "clipped policy loss\n+ clipped value loss", "#d8f0d8")
    for q in ("answers, log pi", "log pi_ref", "score r(x, y)"):
        _arrow(ax, quantities[q], (4.3, 2.5), gap=(0.7, 1.15))
    _arrow(ax, quantities["values V(s_t)"], (4.3, 0.5), gap=(0.7, 0.8))
    ax.annotate("", xy=(4.3, 0.85), xytext=(4.3, 2.15), arrowprops=dict(arrowstyle="-|>", color="black", lw=1))
    _arrow(ax, (4.3, 0.5), (6.3, 1.5), gap=(0.8, 0.95))
    ax.annotate("", xy=(0, 3.25), xytext=(6.3, 1.75), arrowprops=dict(arrowstyle="->", color="tab:red", lw=1,
                                                                         connectionstyle="arc3,rad=0.35", shrinkA=20, shrinkB=20))
    ax.text(3.3, 3.75, "gradient step: policy adapter and value head", color="tab:red", fontsize=8, ha="center")
    ax.set_xlim(-0.9, 7.3)
    ax.set_ylim(-0.6, 4.0)
    ax.axis("off")
    ax.set_title("One PPO step: four roles, two networks")
    fig.tight_layout()
    return fig
