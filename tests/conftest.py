import pytest


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """Point every stage at a private outputs folder (never the repo's outputs/)."""
    monkeypatch.setenv("MEDGPT_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv("MEDGPT_PRESET", raising=False)
    return tmp_path / "outputs"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """The tiny preset's base model, built once per test session in a private folder."""
    import os

    from medgpt_utils.presets import get_preset
    from medgpt_utils.stages import base

    folder = tmp_path_factory.mktemp("shared_outputs")
    old = os.environ.get("MEDGPT_OUTPUT_DIR")
    os.environ["MEDGPT_OUTPUT_DIR"] = str(folder)
    try:
        path = base.run(get_preset("tiny", verbose=False))
    finally:
        if old is None:
            os.environ.pop("MEDGPT_OUTPUT_DIR")
        else:
            os.environ["MEDGPT_OUTPUT_DIR"] = old
    return path


def pytest_collection_modifyitems(config, items):
    """Notebook executions (nbmake) are slow: `pytest -m "not slow"` leaves them out."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def small_validation(tmp_path_factory):
    """``--set`` arguments that give the reward model and the RL judge a few held-out records instead of hundreds:
    the tests that build a reward model or run PPO only to check mechanics then skip most of the judging."""
    import json

    from medgpt_utils import data
    from medgpt_utils.presets import TINY_CONDITIONS

    folder = tmp_path_factory.mktemp("small_validation")
    files = {}
    for setting, name, count in (("data.preference_validation", "preference/heldout.jsonl", 24),
                                 ("data.prompts_validation", "prompts/heldout.jsonl", 4)):
        rows = [json.loads(line) for line in data.bundled(*name.split("/")).read_text(encoding="utf-8").splitlines()]
        rows = [r for r in rows if r["condition"] in TINY_CONDITIONS][:count]
        path = folder / name.replace("/", "_")
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        files[setting] = path
    return [arg for setting, path in files.items() for arg in ("--set", f"{setting}={path}")]
