"""Importing TensorFlow and Keras takes seconds per process, so what needs no model must not load
them: params, the light data steps, tracking, the pipeline and what goes to MLflow. A download
that is already in the Keras cache is used without Keras."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

SHARED_MODULES = (
    "tasks.params",
    "tasks.steps",
    "tasks.storage",
    "tasks.tracking",
    "tasks.champion",
    "tasks.pipeline",
    "tasks.grid",
    "tasks.images",
    "tasks.image_data",
    "tasks.text.corpus",
    "tasks.text.log",
)
# The data steps dvc.yaml runs; style transfer's resizes with TensorFlow (PIL differs by a tone), the
# Transformer's prepare step vectorizes with Keras (its module loads Keras only in that step).
DATA_STEP_MODULES = (
    "tasks.text.char_lstm.data",
    "tasks.text.transformer.data",
    "tasks.deepdream.data",
    "tasks.vae.data",
    "tasks.gan.data",
)

# Imports the modules, fetches a file the Keras cache holds, and prints which heavy modules got loaded.
PROBE = """
import importlib, json, sys
from pathlib import Path
for name in sys.argv[3:]:
    importlib.import_module(name)
from tasks import storage
storage.fetch("http://127.0.0.1:9/corpus.txt", Path(sys.argv[1]), sys.argv[2])
print(json.dumps([name for name in ("tensorflow", "keras") if name in sys.modules]))
"""


def technique_modules(file_name: str) -> list[str]:
    """Every technique's `params.py` or `log.py` as a module name (tasks.vae.params, ...)."""
    return sorted(
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        for path in (REPO_ROOT / "tasks").rglob(file_name)
    )


def test_params_data_steps_and_logging_import_neither_tensorflow_nor_keras(tmp_path):
    modules = [
        *SHARED_MODULES,
        *technique_modules("params.py"),
        *technique_modules("log.py"),
        *DATA_STEP_MODULES,
    ]
    assert "tasks.text.char_lstm.params" in modules and "tasks.gan.log" in modules
    cached = tmp_path / "keras-home" / "datasets" / "corpus.txt"
    cached.parent.mkdir(parents=True)
    cached.write_text("a corpus in the Keras cache")
    destination = tmp_path / "repo" / "corpus.txt"
    sha256 = hashlib.sha256(cached.read_bytes()).hexdigest()

    # One process for all: a fresh interpreter is what a DVC stage or a flow starts from.
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(destination), sha256, *modules],
        cwd=REPO_ROOT,
        env={**os.environ, "KERAS_HOME": str(tmp_path / "keras-home")},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == [], "loaded by importing " + ", ".join(modules)
    assert destination.read_text() == "a corpus in the Keras cache"
