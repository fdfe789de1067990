"""The RL seed study: does each alignment method beat the SFT model on every seed, or only on a lucky one?

    python -m medgpt_utils.rl_seeds --methods ppo,dpo,orpo,grpo --seeds 3 --pairs 2
    python -m medgpt_utils.rl_seeds --methods ppo --seeds 3 --set rl.kl_coef=0.05    # try a setting
    python -m medgpt_utils.rl_seeds --methods ppo --betas ppo=0.05,0.1,0.3            # sweep beta (notebook 04 draws it)

Each method trains ``--seeds`` times (``rl.seed`` = preset seed, +1, +2, ...) from one SFT / reward model
pair, and again from each further pair, built with another seed (preset seed + 1, ...): the spread over RL
seeds shows how much the method itself varies, the second pair how much it depends on the models it starts
from. Every run is judged as the stages judge (``judging.verdict``). Results go to
``outputs/<preset>/rl_seeds/``: ``runs.jsonl`` (one line per run; a rerun skips runs already there with the
same settings) and ``table.md`` (per method, and per beta in a sweep: mean and range over runs). Not part of CI:
on the tiny preset each run takes 2-4 minutes on one CPU core (training, then judging on the RL prompts and on
the SFT stage's question sets).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
from contextlib import contextmanager
from pathlib import Path

from .artifacts import OUTPUT_ENV, output_root, stage_dir
from .judging import QUESTION_SETS, WIN_CRITERIA, judged_gain
from .presets import PRESETS, Preset, field_value, get_preset, override, parse_overrides

FIRST_STAGES = ("base", "pt", "sft", "rm")
# The committed study of the tiny preset (2026-12-07, 2-core AMD EPYC: six runs per method at the preset's beta,
# plus PPO's and GRPO's beta sweeps), read by notebooks 04 and 05 so that their text quotes no number by hand;
# regenerate with this module and copy outputs/tiny/rl_seeds/runs.jsonl here.
COMMITTED_STUDY = Path(__file__).resolve().parent.parent / "notebooks" / "seed_study.jsonl"  # what an SFT / reward-model pair is built from


@contextmanager
def outputs_in(folder: Path):
    """Point every stage at ``folder`` (``$MEDGPT_OUTPUT_DIR``) for the block."""
    previous = os.environ.get(OUTPUT_ENV)
    os.environ[OUTPUT_ENV] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(OUTPUT_ENV, None)
        else:
            os.environ[OUTPUT_ENV] = previous


def pair_folder(study: Path, pair_seed: int) -> Path:
    return study / f"pair-seed{pair_seed}"


def reuse_pipeline_models(preset: Preset, study: Path) -> None:
    """Copy the pipeline's own base/PT/SFT/RM folders into the study when they are current for ``preset``
    (the first pair is then the models ``medgpt run`` made, and nothing is trained twice)."""
    from .fingerprints import is_current

    target = pair_folder(study, preset.seed) / preset.name
    if all(is_current(preset, s) for s in FIRST_STAGES):
        for stage in FIRST_STAGES:
            if not (target / stage).exists():
                shutil.copytree(stage_dir(preset.name, stage), target / stage)


def run_one(preset: Preset, method: str) -> dict:
    """Train ``method`` with ``preset`` (its inputs built if stale) and return its metrics."""
    from .stages import ALL_STAGES

    module = ALL_STAGES[method][0]
    return json.loads((module.run(preset) / "metrics.json").read_text(encoding="utf-8"))


SUMMARY_KEYS = ("score_before", "score_after", "score_gain", "score_gain_question_sets", "score_gain_all_prompts", "win_rate", "urgent_care_before", "urgent_care_after",
                "recall_before", "recall_after", "wrong_condition_before", "wrong_condition_after", "non_word_before",
                "non_word_after", "kl_to_reference", "train_seconds", "verdict",
                *(f"{m}_{qs}_{w}" for m in ("recall", "wrong_condition") for qs in QUESTION_SETS for w in ("before", "after")))


# The knob that keeps each method near the SFT model (its KL coefficient, or DPO's / ORPO's temperature-like beta):
# the study records it with every run, and a sweep (--betas) varies it.
BETA_FIELDS = {"ppo": "rl.kl_coef", "grpo": "preference.grpo_beta", "dpo": "preference.dpo_beta", "orpo": "preference.orpo_beta"}


def run_record(method: str, pair_seed: int, rl_seed: int, metrics: dict, beta: float | None = None) -> dict:
    return {"method": method, "pair_seed": pair_seed, "rl_seed": rl_seed, "beta": beta,
            "fingerprint": metrics["made_with"]["fingerprint"], **{k: metrics.get(k) for k in SUMMARY_KEYS}}


def read_runs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []


def study(preset: Preset, methods: list[str], seeds: int, pair_seeds: list[int], log=print,
          betas: dict[str, list[float]] | None = None) -> list[dict]:
    """Every (pair, method, beta, RL seed) run, reusing those already in ``runs.jsonl`` with the same fingerprint.
    Pair seeds build the SFT / reward-model pairs (in ``pair-seed<S>/``, each built when missing or stale); ``betas``
    gives a method's values of its ``BETA_FIELDS`` knob to sweep (default: the preset's own)."""
    from .fingerprints import stage_fingerprint

    folder = output_root() / preset.name / "rl_seeds"
    runs_file = folder / "runs.jsonl"
    done = {(r["method"], r["pair_seed"], r["rl_seed"], r["fingerprint"]): r for r in read_runs(runs_file)}
    reuse_pipeline_models(preset, folder)
    records = []
    for pair_seed in pair_seeds:
        with outputs_in(pair_folder(folder, pair_seed)):
            for method in methods:
                for beta in (betas or {}).get(method) or [field_value(preset, BETA_FIELDS[method])]:
                    for rl_seed in [preset.seed + i for i in range(seeds)]:
                        run_preset = override(preset, {"seed": pair_seed, "rl.seed": rl_seed, BETA_FIELDS[method]: beta})
                        key = (method, pair_seed, rl_seed, stage_fingerprint(run_preset, method))
                        if key in done:
                            records.append(done[key])
                            log(f"[{method} pair {pair_seed} beta {beta} seed {rl_seed}] already measured with these settings")
                            continue
                        log(f"[{method} pair {pair_seed} beta {beta} seed {rl_seed}] training")
                        record = run_record(method, pair_seed, rl_seed, run_one(run_preset, method), beta)
                        folder.mkdir(parents=True, exist_ok=True)
                        with runs_file.open("a", encoding="utf-8") as f:
                            f.write(json.dumps(record) + "\n")
                        records.append(record)
                        log(one_line(record))
    (folder / "table.md").write_text(markdown(records, preset), encoding="utf-8")
    return records


def _interval(g: dict) -> str:
    return f"{g['mean']:+.2f} ({g['low']:+.2f} .. {g['high']:+.2f})"


def one_line(r: dict) -> str:
    return (f"  gain {_interval(r['score_gain'])}, all prompts {_interval(judged_gain(r))}  win rate {r['win_rate']:.2f}  "
            f"urgent {r['urgent_care_before']:.2f}->{r['urgent_care_after']:.2f}  "
            f"recall {r['recall_before']:.2f}->{r['recall_after']:.2f}  KL {r['kl_to_reference']:.1f}  "
            f"wins: {r['verdict']['wins']}")


def _spread(values: list[float], fmt: str = "{:+.2f}") -> str:
    """mean (min .. max)"""
    return f"{fmt.format(statistics.mean(values))} ({fmt.format(min(values))} .. {fmt.format(max(values))})"


SUMMARY_COLUMNS = ("method", "runs", "wins", "reward gain", "reward gain, all prompts", "gain interval above 0", "win rate", "urgent care change",
                   "recall change", "recall change, held-out questions", "recall change, hand-written",
                   "wrong-condition change", "wrong-condition change, question sets", "non-word change", "KL to SFT", "train s")


def summary_row(method: str, runs: list[dict]) -> dict:
    def change(key, fmt="{:+.2f}"):
        measured = [r for r in runs if r.get(f"{key}_after") is not None and r.get(f"{key}_before") is not None]
        return _spread([r[f"{key}_after"] - r[f"{key}_before"] for r in measured], fmt) if measured else "n/a"

    return {"method": method, "runs": str(len(runs)), "wins": f"{sum(r['verdict']['wins'] for r in runs)}/{len(runs)}",
            "reward gain": _spread([r["score_gain"]["mean"] for r in runs]),
            "reward gain, all prompts": _spread([judged_gain(r)["mean"] for r in runs]),
            "gain interval above 0": f"{sum(judged_gain(r)['low'] > 0 for r in runs)}/{len(runs)}",
            "win rate": _spread([r["win_rate"] for r in runs], "{:.2f}"),
            "urgent care change": change("urgent_care"), "recall change": change("recall"),
            "recall change, held-out questions": change("recall_heldout"), "recall change, hand-written": change("recall_handwritten"),
            "wrong-condition change": change("wrong_condition", "{:+.3f}"),
            "wrong-condition change, question sets": " / ".join(change(f"wrong_condition_{qs}", "{:+.3f}") for qs in QUESTION_SETS),
            "non-word change": change("non_word", "{:+.3f}"),
            "KL to SFT": _spread([r["kl_to_reference"] for r in runs], "{:.1f}"),
            "train s": _spread([r["train_seconds"] for r in runs], "{:.0f}")}


def _before_after(r: dict, key: str, fmt: str) -> str:
    before, after = r.get(f"{key}_before"), r.get(f"{key}_after")
    return "n/a" if before is None or after is None else f"{fmt.format(before)} -> {fmt.format(after)}"


def _table(columns, rows) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + \
           ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]


def committed_runs(method: str | None = None, sweep: bool = False) -> list[dict]:
    """The committed study's runs (``COMMITTED_STUDY``), all methods' or one's: those at the tiny preset's own beta
    (the study proper), or with ``sweep`` every beta tried (the trade-off figures)."""
    runs = read_runs(COMMITTED_STUDY)
    if not runs:
        raise FileNotFoundError(f"{COMMITTED_STUDY}: the committed seed study is missing")
    chosen = PRESETS["tiny"]
    return [r for r in runs if (method is None or r["method"] == method)
            and (sweep or r.get("beta") in (None, field_value(chosen, BETA_FIELDS[r["method"]])))]


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per method, or per method and beta where the records sweep a method's beta."""
    groups = list(dict.fromkeys((r["method"], r.get("beta")) for r in records))
    swept = {m for m, _ in groups if sum(g == m for g, _ in groups) > 1}
    return [summary_row(f"{m} (beta {b:g})" if m in swept else m, [r for r in records if (r["method"], r.get("beta")) == (m, b)])
            for m, b in groups]


def summary_markdown(records: list[dict]) -> str:
    """Per method (and beta, in a sweep): mean (min .. max) over its runs (the first table of ``markdown``)."""
    return "\n".join(_table(SUMMARY_COLUMNS, summary_rows(records))) + "\n"


def markdown(records: list[dict], preset: Preset) -> str:
    """Per method: mean (min .. max) over every run; then every run's own numbers and verdict."""
    pairs = sorted({r["pair_seed"] for r in records})
    lines = [f"Preset {preset.name}: {len(records)} runs, SFT/reward-model pairs built with seeds "
             f"{', '.join(map(str, pairs))}; each cell: mean (min .. max) over runs. A run wins when all of: "
             + "; ".join(WIN_CRITERIA.values()) + ".", ""]
    lines += _table(SUMMARY_COLUMNS, summary_rows(records))
    per_run = [{"method": r["method"], "beta": "" if r.get("beta") is None else f"{r['beta']:g}", "pair seed": r["pair_seed"], "RL seed": r["rl_seed"],
                "SFT -> new score": f"{r['score_before']:.2f} -> {r['score_after']:.2f}",
                "gain (95% interval)": _interval(r["score_gain"]),
                "gain, all prompts (95% interval)": _interval(judged_gain(r)),
                "urgent care": f"{r['urgent_care_before']:.2f} -> {r['urgent_care_after']:.2f}",
                "recall": f"{r['recall_before']:.2f} -> {r['recall_after']:.2f}",
                "wrong condition": f"{r['wrong_condition_before']:.3f} -> {r['wrong_condition_after']:.3f}",
                "recall, held-out / hand-written questions": " / ".join(_before_after(r, f"recall_{qs}", "{:.2f}") for qs in QUESTION_SETS),
                "wrong condition, question sets": " / ".join(_before_after(r, f"wrong_condition_{qs}", "{:.3f}") for qs in QUESTION_SETS),
                "non-words": f"{r['non_word_before']:.3f} -> {r['non_word_after']:.3f}",
                "KL": f"{r['kl_to_reference']:.1f}", "wins": "yes" if r["verdict"]["wins"] else
                "no: " + ", ".join(k for k in WIN_CRITERIA if r["verdict"].get(k) is False)} for r in records]
    lines += ["", "Every run:", ""] + _table(list(per_run[0]), per_run) if per_run else []
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medgpt_utils.rl_seeds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--methods", default="ppo,dpo,orpo,grpo", help="comma-separated alignment stages")
    parser.add_argument("--seeds", type=int, default=3, help="RL seeds per SFT / reward-model pair")
    parser.add_argument("--pairs", type=int, default=2, help="SFT / reward-model pairs, built with seeds preset seed, +1, ...")
    parser.add_argument("--pair-seeds", help="the pairs' seeds instead, comma-separated (e.g. 42,1)")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE", default=[], help="override a preset field")
    parser.add_argument("--betas", action="append", metavar="METHOD=B1,B2", default=[],
                        help="sweep a method's beta (" + ", ".join(f"{m}: {f}" for m, f in BETA_FIELDS.items()) + "), e.g. ppo=0.02,0.05,0.2")
    args = parser.parse_args(argv)
    from .pipeline import stage_names

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(stage_names(aligns=True)))
    if unknown:
        parser.error(f"--methods: {', '.join(unknown)} is not an alignment stage ({', '.join(stage_names(aligns=True))})")
    if args.seeds < 1 or args.pairs < 1:
        parser.error("--seeds and --pairs must be at least 1")
    preset = get_preset(args.preset, parse_overrides(args.set), verbose=False)
    pair_seeds = ([int(s) for s in args.pair_seeds.split(",")] if args.pair_seeds
                  else [preset.seed + i for i in range(args.pairs)])
    betas = {}
    for item in args.betas:
        method, _, values = item.partition("=")
        if method not in BETA_FIELDS or not values:
            parser.error(f"--betas wants METHOD=B1,B2 with METHOD one of {', '.join(BETA_FIELDS)}, got {item!r}")
        betas[method] = [float(v) for v in values.split(",")]
    records = study(preset, methods, args.seeds, pair_seeds, betas=betas)
    print(markdown(records, preset))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
