"""The ``medgpt`` command: run the whole pipeline or one stage, on any preset.

    medgpt run --preset tiny          # every stage, in order, then outputs/tiny/report.md
    medgpt pt --preset colab-t4       # one stage
    medgpt presets                    # what each preset holds
    accelerate launch -m medgpt_utils.cli pt --preset gpu-24gb   # several GPUs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .presets import PRESETS, get_preset, parse_overrides


def _add_preset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), help="hardware preset (default: $MEDGPT_PRESET, else detected)")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE", default=[],
                        help="override a preset field, e.g. --set pt.max_steps=20 --set lora_r=8 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from .stages import ALL_STAGES

    parser = argparse.ArgumentParser(prog="medgpt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run every stage in order and write outputs/<preset>/report.md",
                         description="Run every stage in order, skipping finished ones unless --force, then write the report.")
    _add_preset_options(run)
    run.add_argument("--force", action="store_true", help="re-run stages that already have outputs")
    for name, (module, summary) in ALL_STAGES.items():
        stage = sub.add_parser(name, help=summary, description=(module.__doc__ or summary).strip(),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_preset_options(stage)
    presets = sub.add_parser("presets", help="print every preset's settings as JSON", description="Print every preset's settings as JSON.")
    presets.add_argument("--name", choices=sorted(PRESETS), help="only this preset")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .report import write_report
    from .stages import STAGES, run_stage
    from .artifacts import stage_done

    args = build_parser().parse_args(argv)
    if args.command == "presets":
        chosen = [args.name] if args.name else list(PRESETS)
        print(json.dumps({n: dataclasses.asdict(PRESETS[n]) for n in chosen}, indent=2))
        return 0
    try:
        preset = get_preset(args.preset, parse_overrides(args.set))
    except ValueError as err:
        print(f"medgpt: error: {err}", file=sys.stderr)
        return 2
    if args.command == "run":
        for name in STAGES:
            if stage_done(preset.name, name) and not args.force:
                print(f"[{name}] already done, skipping (use --force to re-run)")
                continue
            print(f"[{name}] running ...")
            print(f"[{name}] saved to {run_stage(name, preset)}")
        report = write_report(preset, list(STAGES))
        print(f"Report written to {report}")
        return 0
    print(f"[{args.command}] saved to {run_stage(args.command, preset)}")
    write_report(preset, list(STAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
