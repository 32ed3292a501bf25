"""The top of a run's report: what was run (command), when, with what (versions, git commit), where (machine), and
the resolved config; and the grid of real images shown beside generation 0's.

`invocation()` is recorded in run.json by each command that trains (`run.json["invocation"]`); a run recorded
before it existed gets what its files still tell (`.hydra/overrides.yaml`, run.json's environment).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from imgcollapse.metric_facts import RULER_VERSION
from imgcollapse.report import page
from imgcollapse.report.figures import grid_image, save_png

REAL_GRID = "real_grid.png"  # the run dir's grid of real training images, written when the run starts
SHOWN_VERSIONS = ("imgcollapse", "torch", "diffusers", "accelerate", "python")


def git_commit(path: Path | None = None) -> str | None:
    """`git describe --always --dirty` of the checkout the kit runs from; None for an installed kit."""
    where = Path(path or Path(__file__).resolve().parents[2])
    if not (where / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(where), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def machine() -> dict[str, Any]:
    """The host, OS, CPU cores and GPU (if any) a command ran on."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(), "cpu": cpu_model(),
            "gpu": gpu}


def cpu_model() -> str:
    """The CPU's model name (torch's CPU kernels give the same bits on the same model, not across models)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def command() -> str:
    """The command as a user would retype it: `imgcollapse OVERRIDES` (a sweep job: its own overrides)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        overrides = list(HydraConfig.get().overrides.task)
        return " ".join(["imgcollapse", *overrides])
    return "imgcollapse.run_chain(cfg)  (Python API; the config is below)"


def invocation() -> dict[str, Any]:
    """What run.json records about the command that trains now: command, time, git commit, machine, and the
    metrics' ruler version (a number recorded from the run is stale once the ruler changes)."""
    return {"command": command(), "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "git_commit": git_commit(), "machine": machine(), "ruler": RULER_VERSION}


def write_real_grid(images: Any, path: Path) -> None:
    """The grid of real training images the report shows beside generation 0's (same size and layout)."""
    save_png(grid_image(images, title="real (training pool)"), path)


def rebuild_real_grid(root: Path, config: Mapping[str, Any]) -> Path | None:
    """For a run recorded before real_grid.png existed: the grid from its dataset, if it loads without a download
    (None otherwise: the report says so)."""
    path = Path(root) / REAL_GRID
    if path.exists():
        return path
    dataset = dict(config.get("dataset") or {})
    if not dataset.get("_target_") or dataset.get("download"):
        return None
    try:
        from hydra.utils import get_object

        splits = get_object(dataset["_target_"])(OmegaConf.create(dataset))  # the loader reads keys as attributes
        grid_size = int((config.get("report") or {}).get("grid_size") or 64)
        write_real_grid(splits.train.images[:grid_size], path)
        return path
    except Exception:  # the figure is a nicety: a dataset that cannot load here is left out, not fatal
        return None


def _command(root: Path, meta: Mapping[str, Any]) -> str:
    invoked = meta.get("invocation") or {}
    if invoked.get("command"):
        return str(invoked["command"])
    overrides = Path(root) / ".hydra" / "overrides.yaml"
    if overrides.exists():
        return " ".join(["imgcollapse", *(yaml.safe_load(overrides.read_text()) or [])])
    return "(not recorded)"


def facts(root: Path, meta: Mapping[str, Any], last_done: str | None) -> list[tuple[str, str]]:
    """(label, text) lines of the report's header."""
    invoked = meta.get("invocation") or {}
    environment = meta.get("environment") or {}
    versions = environment.get("versions") or meta.get("versions") or {}
    shown = ", ".join(f"{k} {versions[k]}" for k in SHOWN_VERSIONS if k in versions)
    commit = invoked.get("git_commit")
    machine_info = invoked.get("machine") or {}
    where = ", ".join(str(v) for v in (machine_info.get("host"), machine_info.get("platform")) if v)
    cpus = f"{machine_info['cpus']} CPU cores" if machine_info.get("cpus") else ""
    compute = ", ".join(x for x in (
        cpus, machine_info.get("gpu") or "",
        f"device {environment['device']}" if environment.get("device") else "",
        f"{environment['threads']} torch threads" if environment.get("threads") else "",
        f"mixed precision {environment['mixed_precision']}" if environment.get("mixed_precision") else "",
        f"{environment['num_processes']} processes" if (environment.get("num_processes") or 1) > 1 else "") if x)
    started = meta.get("started")
    when = f"started {started}" if started else "start not recorded"
    if invoked.get("time"):
        when += f"; last command {invoked['time']}"
    if last_done:
        when += f"; last generation finished {last_done}"
    return [("command", _command(root, meta)), ("date", when),
            ("versions", shown + (f"; git {commit}" if commit else "; git commit not recorded")),
            ("machine", "; ".join(x for x in (where, compute) if x) or "not recorded")]


def header_html(root: Path, meta: Mapping[str, Any], last_done: str | None) -> str:
    """The header as a two-column table (label, text), the command in monospace."""
    rows = []
    for label, text in facts(root, meta, last_done):
        value = f"<code>{page.esc(text)}</code>" if label == "command" else page.esc(text)
        rows.append(f"<tr><th style='text-align:left'>{page.esc(label)}</th><td class=text>{value}</td></tr>")
    return f"<table class=header>{''.join(rows)}</table>"


def resolved_config_text(root: Path, meta: Mapping[str, Any]) -> tuple[str, str]:
    """(YAML of the resolved config the run trains with, where it comes from): run.json's copy (no `${...}`)."""
    if meta.get("config"):
        return yaml.safe_dump(meta["config"], sort_keys=False), "run.json (resolved)"
    path = Path(root) / ".hydra" / "config.yaml"
    if path.exists():
        return path.read_text(), ".hydra/config.yaml (not resolved: run.json is missing)"
    return "", "no config found"
