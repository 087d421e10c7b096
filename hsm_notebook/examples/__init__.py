"""The bundled example: a tiny training script, its sweep file and a search over it."""

from pathlib import Path

EXAMPLES = Path(__file__).parent
SWEEP_YAML = EXAMPLES / "sweep.yaml"
SEARCH_YAML = EXAMPLES / "search.yaml"
TRAIN_PY = EXAMPLES / "train.py"
