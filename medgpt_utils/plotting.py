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
