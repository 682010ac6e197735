"""`genray bench`: figures written to files (JSON + Markdown), never asserted in timed tests."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    import ray

    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
    }


def machine_line(info: dict[str, Any]) -> str:
    gpu = info.get("gpu") or "no GPU"
    return (f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores, {info['memory_gib']} GiB, {gpu}); "
            f"Python {info['python']}, torch {info['torch']}, Ray {info['ray']}.")


def write_results(out_dir: Path, name: str, result: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=2, sort_keys=True))
    md_path.write_text(markdown)
    return json_path, md_path


def update_readme(readme: Path, name: str, markdown: str) -> bool:
    """Replace the block between <!-- bench:NAME --> and <!-- /bench:NAME --> in the README."""
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    if not pattern.search(text):
        return False
    readme.write_text(pattern.sub(lambda m: m.group(1) + markdown.rstrip() + "\n" + m.group(2), text))
    return True


def publish(name: str, result: dict[str, Any], markdown: str, out: Path, readme: Optional[Path],
            log: Callable[[str], None] = print) -> None:
    """A bench's figures to <out>/<name>.json and .md, its table to `log`, and (with `readme`) into
    the README's <!-- bench:NAME --> block."""
    json_path, md_path = write_results(out, name, result, markdown)
    log(markdown)
    log(f"wrote {json_path} and {md_path}")
    if readme is not None:
        updated = update_readme(readme, name, markdown)
        log(f"README table {'updated' if updated else 'not found'} in {readme}")


def previous_results(out: Path, name: str) -> Optional[dict[str, Any]]:
    """The last <out>/<name>.json, whose parts a bench run with --parts keeps; None if there is none."""
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
