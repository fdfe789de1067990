"""What every notebook does first: the Colab install cell, then versions, hardware and preset."""

from __future__ import annotations

import platform

from .presets import Preset, get_preset

REPO_URL = "https://github.com/medgpt-course/medgpt-course"

# The first code cell of every notebook, character for character (tests/test_versions.py checks
# it). It installs only inside Colab, and installs the project itself, so the pinned versions
# come from pyproject.toml and nowhere else; Colab's own CUDA torch satisfies "torch>=2.4".
COLAB_SETUP_CELL = f'''# Setup: runs only in Colab (locally, install once with the README's command).
import os, subprocess, sys
if "google.colab" in sys.modules and not os.path.exists("/content/medgpt-course"):
    subprocess.run(["git", "clone", "--depth", "1", "{REPO_URL}", "/content/medgpt-course"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/medgpt-course"], check=True)
if "google.colab" in sys.modules:
    sys.path.insert(0, "/content/medgpt-course")
    os.chdir("/content/medgpt-course/notebooks")'''

PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes")


def environment() -> dict:
    """Versions of the packages the course uses and the hardware it runs on."""
    import importlib.metadata as md

    import torch

    info = {name: md.version(name) for name in PACKAGES}
    info["python"] = platform.python_version()
    info["cpu_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.1f} GiB"
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    else:
        info["gpu"] = "none (CPU only)"
    return info


def setup(preset_name: str | None = None, overrides: dict | None = None) -> Preset:
    """Print versions, hardware and the preset in use; return the preset."""
    for key, value in environment().items():
        print(f"{key:>14}: {value}")
    preset = get_preset(preset_name, overrides)
    print(f"{'settings':>14}: {preset.describe()}")
    return preset
