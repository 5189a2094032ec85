"""Compose ``params.yaml`` from ``conf/`` with Hydra, as DVC does for ``dvc exp run -S``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hmrmamba.atomic import atomic_path
from hmrmamba.errors import InputError

#: The comment heading params.yaml files that are not DVC's: the scratch projects of the comparison flows.
#: The project's own params.yaml has none, see :func:`params_text`.
HEADER = ("# Generated from conf/ by `hmrmamba params` (profile: {profile}). Edit conf/, then regenerate.\n"
          "# `dvc exp run -S profile=paper-s` composes the same way.\n")


def available_profiles(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "conf/profile").glob("*.yaml"))


def compose(root: Path, profile: str = "default", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose conf/config.yaml with ``profile`` and Hydra-style ``overrides`` into a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    if profile not in available_profiles(root):
        raise InputError(f"unknown profile '{profile}'", file=root / "conf/profile", field="profile",
                         expected=f"one of {available_profiles(root)}")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str((root / "conf").resolve()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=[f"profile={profile}", *overrides])
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(first, file=root / "conf/config.yaml", field="overrides",
                         expected="overrides of existing keys, e.g. train_lift.epochs=2 (+key=value adds one)"
                         ) from None


def write_params(root: Path, params: dict[str, Any]) -> Path:
    """Validate ``params`` and write them to ``root/params.yaml`` (atomically) -> the path."""
    from hmrmamba.config import validate_params

    path = root / "params.yaml"
    validate_params(params, file=path)
    with atomic_path(path) as tmp:
        tmp.write_text(params_text(params), encoding="utf-8")
    return path


def params_text(params: dict[str, Any]) -> str:
    """``params`` as YAML, byte for byte as DVC writes params.yaml when it composes with Hydra
    (``dvc exp run -S``: ``OmegaConf.to_yaml``), so applying an experiment changes only the changed values.
    No comment header: DVC's rewrite would drop it (conf/config.yaml says where params.yaml comes from)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(params))
