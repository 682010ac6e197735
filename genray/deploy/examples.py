"""One small, valid request per deployment (each family's registry entry holds its own): what the
tests send first and what `genray bench perf` times each deployment's math on. family ->
(endpoint path, JSON body)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genray.deploy import Served

EXAMPLES: Mapping[str, tuple[str, dict[str, Any]]] = Served(lambda entry: entry.example)


def untrained_model(family: str, folder: Path, data: dict[str, Any] | None = None, name: str | None = None,
                    seed: int | None = None) -> str:
    """A checkpoint of freshly built weights (the family's default config): it costs the same
    to serve as a trained one, so it is enough to exercise and time the serving path. `data`
    sets fields of the run config's data section, e.g. an image model's shape {"image_size": 64,
    "channels": 3, "labels": ["red", "green", "blue"]}; it is saved at folder/name (default: the
    family's name)."""
    import json

    from genray import checkpoint
    from genray.config import build_config
    from genray.families import get_family

    cfg = build_config(family, overrides=[f"data.{key}={json.dumps(value)}" for key, value in (data or {}).items()])
    family_cls = get_family(family)
    if seed is not None:  # the weights of this seed (models that differ, for tests and benches)
        import torch

        torch.manual_seed(seed)
    model = family_cls(cfg.model, spec=family_cls.spec_of(cfg.data))
    path = Path(folder) / (name or family)
    checkpoint.save(path, family=family, config=cfg.to_dict(), state=model.state_dict(), epoch=0, metrics={})
    return str(path)
