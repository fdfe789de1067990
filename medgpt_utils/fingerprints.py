"""Outputs that know how they were made.

Each stage's ``metrics.json`` records the preset it ran with, the settings its outputs depend on, and a
fingerprint of those settings, of each input stage's fingerprint and of the bundled data. A finished stage
counts as current only when its fingerprint equals the one the present preset gives; otherwise it was made
with other settings (another ``--set``, another seed, an older SFT model under a newer reward model).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

from .artifacts import METRICS_FILE, stage_dir
from .pipeline import TRAINING_FIELDS, info
from .presets import Preset, field_value


def _jsonable(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _hash(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def data_fingerprint() -> str:
    """One hash over every bundled data file the card lists (a changed file changes every stage)."""
    from .data import bundled, card_counts

    digest = hashlib.sha256()
    for name in sorted(card_counts()):
        digest.update(name.encode() + bundled(name).read_bytes())
    return digest.hexdigest()[:16]


def stage_settings(preset: Preset, stage: str) -> dict:
    """The preset fields ``stage``'s outputs depend on."""
    stage_info = info(stage)
    fields = stage_info.reads + (TRAINING_FIELDS if stage_info.trains else ("conditions", "seed"))
    settings = {name: _data_setting(name, field_value(preset, name)) for name in fields}
    if "full_parameter_stages" in settings:  # a stage depends on how it trains itself (its inputs' own fingerprints
        # cover theirs): training the reward model in full leaves the PT and SFT models current
        settings["full_parameter_stages"] = stage in preset.full_parameter_stages
    if stage == "base" and not (preset.tiny and preset.tiny.tokenizer_learns_dialogues):  # the SFT data shapes the tokenizer only
        # when it learns it: otherwise other SFT data leaves the base model (and PT) current
        settings = {name: value for name, value in settings.items() if not name.startswith("data.sft")}
    if stage == "rm" and preset.reward_kind == "classifier":  # the classifier reads neither knob: reward models built
        # before the implicit kind existed stay current
        settings = {name: value for name, value in settings.items() if name not in ("reward_kind", "reward_beta")}
    return settings


def _data_setting(name: str, value):
    """A field's value; a data source naming local files also records their sizes and times, so a stage
    trained on a file that has changed since counts as stale."""
    from .sources import local_files_signature

    is_source = name.startswith("data.") and name != "data.on_error" and isinstance(value, str) and value.strip() not in ("", "bundled")
    return {"sources": value, "files": local_files_signature(value)} if is_source else _jsonable(value)


def _inputs(preset: Preset, stage: str) -> dict[str, str]:
    return {name: stage_fingerprint(preset, name) for name in info(stage).inputs}


def stage_fingerprint(preset: Preset, stage: str) -> str:
    return _hash({"stage": stage, "settings": stage_settings(preset, stage), "inputs": _inputs(preset, stage),
                  "data": data_fingerprint()})


def stage_record(preset: Preset, stage: str) -> dict:
    """What ``metrics.json`` keeps about how the outputs were made."""
    inputs, settings = _inputs(preset, stage), stage_settings(preset, stage)
    return {"fingerprint": _hash({"stage": stage, "settings": settings, "inputs": inputs, "data": data_fingerprint()}),
            "settings": settings, "inputs": inputs, "data": data_fingerprint(),
            "preset_settings": dataclasses.asdict(preset)}


def _saved(preset: Preset, stage: str) -> dict | None:
    path = stage_dir(preset.name, stage) / METRICS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def stale_reason(preset: Preset, stage: str) -> str | None:
    """None when the stage's outputs are current for ``preset``; else why not, in words."""
    saved = _saved(preset, stage)
    if saved is None:
        return "not built yet"
    made = saved.get("made_with") or {}
    if made.get("fingerprint") == stage_fingerprint(preset, stage):
        return None
    if not made:
        return "built before outputs recorded how they were made"
    current = json.loads(json.dumps(stage_settings(preset, stage), default=str))  # tuples read back as lists
    changed = [name for name, value in current.items() if made.get("settings", {}).get(name) != value]
    changed += [f"the {name} stage" for name, fingerprint in _inputs(preset, stage).items()
                if made.get("inputs", {}).get(name) != fingerprint]
    if made.get("data") != data_fingerprint():
        changed.append("the bundled data")
    return "made with other settings (changed: " + ", ".join(changed or ["unknown"]) + ")"


def is_current(preset: Preset, stage: str) -> bool:
    return stale_reason(preset, stage) is None
