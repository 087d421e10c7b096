"""The bundled example: a tiny training script and its sweep file."""

from pathlib import Path

EXAMPLES = Path(__file__).parent
SWEEP_YAML = EXAMPLES / "sweep.yaml"
TRAIN_PY = EXAMPLES / "train.py"
