"""One small, valid request per deployment (each family's registry entry holds its own): what the
tests send first and what `genray bench perf` times each deployment's math on. family ->
(endpoint path, JSON body)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genray.deploy import Served

EXAMPLES: Mapping[str, tuple[str, dict[str, Any]]] = Served(lambda entry: entry.example)


def untrained_model(family: str, folder: Path) -> str:
    """A checkpoint of freshly built weights (the family's default config): it costs the same
    to serve as a trained one, so it is enough to exercise and time the serving path."""
    from genray import checkpoint
    from genray.config import build_config
    from genray.families import get_family

    cfg = build_config(family)
    model = get_family(family)(cfg.model)
    path = Path(folder) / family
    checkpoint.save(path, family=family, config=cfg.to_dict(), state=model.state_dict(), epoch=0, metrics={})
    return str(path)
