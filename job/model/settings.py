"""The network's settings as one value: what a checkpoint records and what eval rebuilds from it.

The ASPP rates and the logits' upsampling alignment change what a set of weights computes without
changing a single parameter shape, so a checkpoint loaded into a network built with other settings
loads cleanly and silently scores lower. Every checkpoint therefore records them (``meta_*``
entries), and eval (later predict and export) builds the network from that record. Pure: no MindSpore
until ``build()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from job import recipe
from job.errors import BadInput


@dataclass(frozen=True)
class NetSettings:
    """Everything that decides the network's structure and its forward computation."""

    model: str = "deeplab_v3_s16"
    num_classes: int = recipe.NUM_CLASSES
    aspp_rates: tuple[int, ...] = recipe.ASPP_RATES
    aspp_dropout: float = recipe.ASPP_DROPOUT  # drop probability, training only
    align_corners: bool = recipe.ALIGN_CORNERS

    @classmethod
    def from_config(cls, config: Any) -> NetSettings:
        """The settings a command's config asks for; fields it lacks (eval has no dropout) take defaults."""
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)}
        if values.get("aspp_rates") is None:
            values.pop("aspp_rates", None)
        else:
            values["aspp_rates"] = tuple(values["aspp_rates"])
        return cls(**values)

    def meta(self) -> dict[str, Any]:
        """Checkpoint metadata (``checkpoints.save_atomic``'s ``meta``): str, int, float and bool only."""
        return {
            "model": self.model,
            "num_classes": self.num_classes,
            "aspp_rates": _rates_text(self.aspp_rates),
            "aspp_dropout": float(self.aspp_dropout),
            "align_corners": bool(self.align_corners),
        }

    def build(self):
        """The DeepLabV3 cell (imports MindSpore)."""
        from job.model.deeplab import deeplabv3

        return deeplabv3(self.model, self.num_classes, self.aspp_rates, self.aspp_dropout, self.align_corners)


def _rates_text(rates: tuple[int, ...]) -> str:
    return " ".join(str(rate) for rate in rates)


def _shown(value: Any) -> str:
    """A value as the flag takes it: ``12 24 36``, ``true``, ``0.7``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return _rates_text(value)
    return str(value)


def _parse_recorded(key: str, value: Any, source: str) -> Any:
    """A ``meta_*`` value as the NetSettings field's type; BadInput naming ``source`` if malformed."""
    try:
        if key == "aspp_rates":
            rates = tuple(int(part) for part in str(value).replace(",", " ").split())
            if not rates or min(rates) < 1:
                raise ValueError(value)
            return rates
        if key == "aspp_dropout":
            return round(float(value), 6)  # stored as float32: 0.7 reads back as 0.699999988
        if key == "align_corners":
            return value.strip().lower() in ("true", "1") if isinstance(value, str) else bool(value)
        if key == "num_classes":
            return int(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{source}: unreadable network record {key}={value!r}") from exc


def settings_from_checkpoint(
    meta: dict[str, Any], config: Any, source: str = "the checkpoint"
) -> NetSettings:
    """The settings to rebuild a checkpoint's network: its record wins over defaults; an explicit
    setting (flag or config file) that contradicts the record is BadInput (exit 2) naming the flag,
    the checkpoint's value and the given one. Settings the checkpoint does not record (older files,
    model zoo checkpoints) come from ``config`` and its defaults.

    ``meta`` is ``checkpoints.meta_of(...)``'s mapping (keys without the ``meta_`` prefix).
    """
    asked = NetSettings.from_config(config)
    explicit = set(getattr(config, "model_fields_set", ()))
    recorded: dict[str, Any] = {}
    for field in dataclasses.fields(NetSettings):
        if field.name not in meta:
            continue
        value = _parse_recorded(field.name, meta[field.name], source)
        given = getattr(asked, field.name)
        if field.name in explicit and value != given:
            raise BadInput(
                f"--{field.name} {_shown(given)} contradicts {source}, which records "
                f"{field.name} {_shown(value)} (leave the flag out to use the checkpoint's)"
            )
        recorded[field.name] = value
    return dataclasses.replace(asked, **recorded)
