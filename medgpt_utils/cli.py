"""The ``medgpt`` command: run the whole pipeline or one stage, on any preset.

    medgpt run --preset tiny          # every stage, in order, the evaluation, then outputs/tiny/report.md
    medgpt pt --preset colab-t4       # one stage
    medgpt presets                    # what each preset holds
    medgpt eval --preset tiny         # every finished stage on the same held-out sets
    medgpt infer --preset tiny --interactive          # chat with the newest stage
    medgpt infer --data_file q.txt --predictions_file p.jsonl
    medgpt web --preset tiny          # gradio chat demo on http://127.0.0.1:7860
    accelerate launch -m medgpt_utils.cli pt --preset gpu-24gb   # several GPUs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .pipeline import STAGE_DATA
from .presets import PRESETS, get_preset, parse_overrides


def _add_preset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), help="hardware preset (default: $MEDGPT_PRESET, else detected)")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE", default=[],
                        help="override a preset field, e.g. --set pt.max_steps=20 --set lora_r=8 (repeatable)")


def _add_dry_run_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", choices=("small", "full"), dest="dry_run",
                        help="a GPU preset's stages on local stand-in models of its architecture (random weights, nothing "
                             "downloaded), a few steps each: small = scaled down (runs on a CPU), full = real shapes "
                             "(on a GPU: peak memory and step time per stage in outputs/<preset>-dry-run-full/budget.md)")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    _add_preset_options(parser)
    parser.add_argument("--base_model", help="model folder or hub id (default: the newest finished stage of the preset)")
    parser.add_argument("--lora_model", help="LoRA adapter folder applied on top of --base_model")
    parser.add_argument("--tokenizer_path", help="tokenizer folder (default: the adapter's, else the base model's)")
    parser.add_argument("--system_prompt", default=None, help="system prompt put before every conversation")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    parser.add_argument("--use_cpu", action="store_true", help="run on the CPU even if a GPU is present")
    parser.add_argument("--gpus", help="GPU ids to use, e.g. 0 or 0,1 (sets CUDA_VISIBLE_DEVICES)")
    quant = parser.add_mutually_exclusive_group()
    quant.add_argument("--load_in_4bit", action="store_true", help="4-bit NF4 weights (bitsandbytes)")
    quant.add_argument("--load_in_8bit", action="store_true", help="8-bit weights (bitsandbytes)")
    parser.add_argument("--trust_remote_code", action="store_true", help="run model code from the hub (off by default)")


def build_parser() -> argparse.ArgumentParser:
    from .stages import ALL_STAGES

    parser = argparse.ArgumentParser(prog="medgpt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run every stage in order and write outputs/<preset>/report.md",
                         description="Run every stage in order, skipping finished ones unless --force, then write the report.")
    _add_preset_options(run)
    _add_dry_run_option(run)
    run.add_argument("--force", action="store_true", help="re-run stages that already have outputs")
    run.add_argument("--reuse-stale", action="store_true",
                     help="keep finished stages made with other settings (warns) instead of rebuilding them")
    for name, (module, summary) in ALL_STAGES.items():
        stage = sub.add_parser(name, help=summary, description=(module.__doc__ or summary).strip(),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_preset_options(stage)
        _add_dry_run_option(stage)
        kind = STAGE_DATA[name]
        stage.add_argument("--data", metavar="SOURCES",
                           help=f"this stage's {kind} data instead of the bundled files (sets data.{kind}): a file, a folder, "
                                "a save_to_disk folder or hub:<dataset id>; several joined by commas (see data/FORMATS.md)")
        stage.add_argument("--validation-data", metavar="SOURCES",
                           help=f"held-out {kind} data (sets data.{kind}_validation; default: a seeded data.validation_percent of --data)")
    evaluate = sub.add_parser("eval", help="evaluate every finished stage on the same held-out sets",
                              description="Evaluate every finished stage on the same held-out sets; table in outputs/<preset>/report.md.")
    _add_preset_options(evaluate)
    export = sub.add_parser("export", help="hand RL to an engine built for scale: `medgpt export verl`",
                            description="Write the RL prompts, the reward function and launch scripts for verl "
                                        "(see medgpt_utils/verl_export.py).")
    export.add_argument("target", choices=["verl"], help="the engine to export for")
    _add_preset_options(export)
    export.add_argument("--out", help="folder to write (default outputs/<preset>/verl)")
    bench = sub.add_parser("bench-eval", help="lm-eval-harness tasks on every finished stage (offline: the course's own)",
                           description="Run lm-eval-harness tasks on every finished stage; scores to outputs/<preset>/lm_eval.json. "
                                       "Offline: the course's medgpt_kb_mc_en,medgpt_kb_mc_zh. With network, e.g. "
                                       "medqa_4options,medmcqa,pubmedqa,cmmlu_clinical_knowledge (medgpt_utils/harness.py).")
    _add_preset_options(bench)
    bench.add_argument("--tasks", default="medgpt_kb_mc_en,medgpt_kb_mc_zh", help="comma-separated lm-eval task names")
    bench.add_argument("--limit", type=int, help="at most this many questions per task (a quick look)")
    infer = sub.add_parser("infer", help="chat with a model or answer a file of questions",
                           description="Interactive chat or batch predictions (the original MedicalGPT inference.py options).")
    _add_model_options(infer)
    infer.add_argument("--interactive", action="store_true", help="chat in the terminal (empty line or 'exit' quits, 'clear' resets)")
    infer.add_argument("--data_file", help="questions: .txt (one per line) or .jsonl (question/instruction/prompt field)")
    infer.add_argument("--predictions_file", default="predictions.jsonl", help="where batch predictions go (JSONL)")
    web = sub.add_parser("web", help="gradio chat demo (bound to 127.0.0.1 unless --host is given)",
                         description="A gradio chat demo of the same generation code as `medgpt infer`.")
    _add_model_options(web)
    web.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    web.add_argument("--port", type=int, default=7860)
    web.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link")
    web.add_argument("--auth", metavar="USER[:PASSWORD]",
                     help="require a login: USER:PASSWORD, or USER with the password in $MEDGPT_WEB_PASSWORD "
                          "(a command line is visible to other users of the machine)")
    presets = sub.add_parser("presets", help="print every preset's settings as JSON (--explain: what each field means)",
                             description="Print every preset's settings as JSON, or with --explain every field's meaning.")
    presets.add_argument("--name", choices=sorted(PRESETS), help="only this preset")
    presets.add_argument("--explain", action="store_true", help="list every field: its --set path, value and meaning")
    return parser


def _run_or_skip(name: str, preset, args) -> None:
    """One stage of `medgpt run`: skipped when current, kept with a warning when stale and --reuse-stale."""
    from .artifacts import stage_done
    from .fingerprints import stale_reason
    from .stages import run_stage

    reason = stale_reason(preset, name)
    if reason is None and not args.force:
        print(f"[{name}] already done with these settings, skipping (use --force to re-run)")
        return
    if reason is not None and stage_done(preset.name, name) and args.reuse_stale and not args.force:
        print(f"[{name}] WARNING: reusing outputs {reason}; their numbers are not this preset's")
        return
    print(f"[{name}] running ({'--force' if reason is None else reason}) ...")
    print(f"[{name}] saved to {run_stage(name, preset)}")


def _data_overrides(args) -> dict[str, str]:
    """``--data`` / ``--validation-data`` of a stage command as the preset fields they set."""
    overrides = {}
    kind = STAGE_DATA.get(args.command)
    if getattr(args, "data", None):
        overrides[f"data.{kind}"] = args.data
        if args.command in ("dpo", "orpo"):
            overrides["preference.pair_source"] = "data"  # the user's pairs, not pairs sampled from the SFT model
    if getattr(args, "validation_data", None):
        overrides[f"data.{kind}_validation"] = args.validation_data
    return overrides


def _check_data_options(args) -> None:
    """``--data ""`` (an unset shell variable, say) would otherwise quietly mean the bundled data."""
    for option, attribute in (("--data", "data"), ("--validation-data", "validation_data")):
        value = getattr(args, attribute, None)
        if value is not None and not value.strip():
            raise ValueError(f"{option} is empty: name a file, a folder, a save_to_disk folder or hub:<dataset id>, "
                             f"or leave {option} out to use the bundled data")


def main(argv: list[str] | None = None) -> int:
    from .artifacts import OutputLockedError
    from .data import DataFormatError
    from .sources import DataSourceError

    from . import threads

    threads.configure()  # says once how many compute threads this process uses, and why
    try:
        return _main(argv)
    except (DataFormatError, DataSourceError) as err:  # the user's data: one line naming the source, no traceback
        print(f"medgpt: error: {err}", file=sys.stderr)
        return 2
    except OutputLockedError as err:  # another process writes the same stage: say which, before any training
        print(f"medgpt: error: {err}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    from .report import write_report
    from .stages import STAGES, run_stage

    args = build_parser().parse_args(argv)
    if args.command == "presets":
        chosen = [args.name] if args.name else list(PRESETS)
        if args.explain:
            from .presets import explain

            for name in chosen:
                print(f"# preset {name}: {PRESETS[name].description}\n{explain(PRESETS[name])}\n")
            return 0
        print(json.dumps({n: dataclasses.asdict(PRESETS[n]) for n in chosen}, indent=2))
        return 0
    if getattr(args, "gpus", None):
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpus  # before preset detection first asks torch about CUDA
    try:
        _check_data_options(args)
        preset = get_preset(args.preset, {**parse_overrides(args.set), **_data_overrides(args)})
    except ValueError as err:
        print(f"medgpt: error: {err}", file=sys.stderr)
        return 2
    if args.command in ("infer", "web"):
        return _chat_command(args, preset)
    from .training import check_data_sources

    check_data_sources(preset)  # a mistyped path fails here, before any stage builds its inputs
    if getattr(args, "dry_run", None):
        from . import dryrun

        preset = dryrun.announced(preset, args.dry_run)
    if args.command == "bench-eval":
        from .harness import evaluate_stages as bench

        bench(preset, [t.strip() for t in args.tasks.split(",") if t.strip()], limit=args.limit)
        return 0
    if args.command == "export":
        from .verl_export import export

        folder = export(preset, args.out)
        print(f"verl files written to {folder}: train.parquet, val.parquet, reward.py, run_ppo.sh, run_grpo.sh")
        return 0
    if args.command == "eval":
        from .compare import evaluate_stages

        evaluate_stages(preset)
        print(f"Report written to {write_report(preset, list(STAGES))}")
        return 0
    if args.command == "run":
        from .training import REUSE_STALE_ENV

        if args.reuse_stale:
            os.environ[REUSE_STALE_ENV] = "1"  # input stages that a stage builds for itself, too
        try:
            for name in STAGES:
                _run_or_skip(name, preset, args)
        finally:
            os.environ.pop(REUSE_STALE_ENV, None)
        from .compare import evaluate_stages

        print("[eval] every stage on the same held-out questions ...")
        evaluate_stages(preset)
        report = write_report(preset, list(STAGES))
        print(f"Report written to {report}")
        _write_dry_run_budget(args, preset)
        return 0
    print(f"[{args.command}] saved to {run_stage(args.command, preset)}")
    _write_dry_run_budget(args, preset)
    from .training import is_main_process

    if is_main_process():  # under torchrun every rank gets here; one writes
        write_report(preset, list(STAGES))
    return 0


def _write_dry_run_budget(args, preset) -> None:
    """A dry run ends with its per-stage time and memory table."""
    if getattr(args, "dry_run", None):
        from .dryrun import write_budget
        from .stages import ALL_STAGES

        path = write_budget(preset, list(ALL_STAGES))
        print(f"[dry run] per-stage time and memory: {path}\n{path.read_text(encoding='utf-8')}")


def _chat_command(args, preset) -> int:
    import torch

    from . import inference

    try:
        auth = _web_credentials(args)
    except ValueError as err:
        print(f"medgpt: error: {err}", file=sys.stderr)
        return 2
    device = "cpu" if args.use_cpu or not torch.cuda.is_available() else "cuda"
    quantization = "4bit" if args.load_in_4bit else "8bit" if args.load_in_8bit else None
    base_model = args.base_model
    if base_model is None:
        from .artifacts import stage_dir

        stage = inference.newest_stage(preset.name)
        base_model = stage_dir(preset.name, stage)
        print(f"model: outputs/{preset.name}/{stage} (the newest finished stage)")
    try:
        model, tokenizer = inference.load_model(base_model, args.lora_model, args.tokenizer_path, quantization, device,
                                                trust_remote_code=args.trust_remote_code or preset.trust_remote_code)
    except (OSError, ValueError) as err:
        print(f"medgpt: error: cannot load the model: {err}", file=sys.stderr)
        return 2
    if args.command == "web":
        from .web import launch

        launch(model, tokenizer, args.system_prompt, args.max_new_tokens, args.temperature,
               host=args.host, port=args.port, share=args.share, auth=auth)
        return 0
    if args.data_file:
        try:
            n = inference.predict_file(model, tokenizer, args.data_file, args.predictions_file, args.system_prompt,
                                       args.max_new_tokens, args.temperature, max_prompt_tokens=preset.max_length)
        except (OSError, ValueError) as err:
            print(f"medgpt: error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {n} predictions to {args.predictions_file}")
    if args.interactive or not args.data_file:
        _chat_loop(inference.ChatSession(model, tokenizer, args.system_prompt, args.max_new_tokens, args.temperature))
    return 0


def _web_credentials(args) -> tuple[str, str] | None:
    if args.command != "web":
        return None
    from .web import credentials

    return credentials(args.auth)


def _chat_loop(session) -> None:
    print("Educational use only: not medical advice. In an emergency call your local emergency number (120 in mainland China).")
    print("Type a question; 'clear' starts over, an empty line or 'exit' quits.")
    while True:
        try:
            question = input("\nUser: ").strip()
        except EOFError:
            break
        if question in ("", "exit", "quit"):
            break
        if question == "clear":
            session.clear()
            continue
        print("Assistant: ", end="", flush=True)
        try:
            for piece in session.stream(question):
                print(piece, end="", flush=True)
        except ValueError as err:  # e.g. --max_new_tokens leaves no room for a prompt
            print(f"\nmedgpt: error: {err}", file=sys.stderr)
            continue
        print()
        if session.notes:
            print(f"({session.note})")


if __name__ == "__main__":
    sys.exit(main())
