"""The document's data, beside the code that puts it in: its prose (prose.yaml) and examples (examples.yaml)."""
from pathlib import Path

import yaml


def _load(name):
    return yaml.safe_load(Path(__file__).with_name(name).read_text(encoding="utf-8"))


PROSE = _load("prose.yaml")
EXAMPLES = _load("examples.yaml")
