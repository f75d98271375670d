"""Resolve a hardware argument: a preset name, a hardware YAML (optionally `base: PRESET`),
or a calibration profile JSON. A preset with a committed profile uses its fitted numbers."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hwmodels.errors import InputError, file_stamp, from_validation, load_mapping
from hwmodels.profile import SCHEMA, Profile
from hwmodels.spec import Hardware

PRESET_DIR = Path(__file__).parent / "presets"
HOST_DIR = PRESET_DIR / "hosts"
# calibration/ is a sibling package; we read its data files, never import it
PROFILE_DIR = Path(__file__).parent.parent / "calibration" / "profiles"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def host_names() -> list[str]:
    return sorted(p.stem for p in HOST_DIR.glob("*.yaml"))


def _named_host(data: dict[str, Any], where: str) -> dict[str, Any]:
    """`host: h200-xeon` swaps in a named host (hwmodels/presets/hosts); a mapping overrides fields."""
    name = data.get("host")
    if not isinstance(name, str):
        return data
    path = HOST_DIR / f"{name}.yaml"
    if not path.exists():
        raise InputError(where, "host", f"unknown host preset {name!r}; known: {', '.join(host_names())} "
                         "(or a mapping of host fields)")
    return {**data, "host": load_mapping(path)}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _raw_preset(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise InputError("hardware", "", f"unknown preset {name!r}; known: {', '.join(preset_names())}")
    return _with_base(load_mapping(path), str(path), seen + (name,))


def _with_base(data: dict[str, Any], where: str, seen: tuple[str, ...]) -> dict[str, Any]:
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or "/" in base:
        raise InputError(where, "base", f"must be a preset name; known: {', '.join(preset_names())}")
    if base in seen:
        raise InputError(where, "base", f"circular base {base!r}")
    if not (PRESET_DIR / f"{base}.yaml").exists():
        raise InputError(where, "base", f"unknown preset {base!r}; known: {', '.join(preset_names())}")
    merged = _raw_preset(base, seen)
    # a part built on a preset keeps the preset's fitted efficiencies unless it overrides them
    prof = _committed_profile(base)
    if prof is not None:
        merged = deep_merge(merged, _fitted_fields(prof))
        merged.setdefault("profile", prof.hardware.profile or f"{base}.json")
    return deep_merge(merged, data)


def _fitted_fields(prof: Profile) -> dict[str, Any]:
    hw = prof.hardware.model_dump()
    return {"efficiency": hw["efficiency"], "host": hw["host"], "device": {"kernel_launch_us": hw["device"]["kernel_launch_us"]}}


def read_profile(path: str | Path) -> Profile:
    data = load_mapping(path)
    if data.get("schema") != SCHEMA:
        raise InputError(str(path), "schema", f"unknown profile schema {data.get('schema')!r}; allowed: {SCHEMA!r}")
    try:
        return Profile.model_validate(data)
    except ValidationError as e:
        raise from_validation(e, str(path)) from None


@lru_cache(maxsize=64)
def _committed_profile(name: str) -> Profile | None:
    p = PROFILE_DIR / f"{name}.json"
    return read_profile(p) if p.exists() else None


def _borrow_efficiency(data: dict[str, Any], where: str) -> dict[str, Any]:
    """`efficiency_from: h100-sxm`: start from that part's fitted numbers, keep explicit ones."""
    src = data.get("efficiency_from")
    if src is None:
        return data
    if not isinstance(src, str) or "/" in src or not (PRESET_DIR / f"{src}.yaml").exists():
        raise InputError(where, "efficiency_from", f"unknown preset {src!r}; known: {', '.join(preset_names())}")
    if data.get("profile"):  # a calibrated part (or one built on it) keeps its own fitted numbers
        return data
    prof = _committed_profile(src)
    if prof is None:
        return data
    fitted = _fitted_fields(prof)
    fitted["device"] = {}  # the kernel floor is a property of the part itself
    out = deep_merge(fitted, data)
    out["profile"] = f"calibration/profiles/{src}.json (efficiency_from)"
    return out


def hardware_from_dict(data: dict[str, Any], where: str) -> Hardware:
    data = _named_host(_borrow_efficiency(_with_base(dict(data), where, ()), where), where)
    try:
        return Hardware.model_validate(data)
    except ValidationError as e:
        raise from_validation(e, where) from None


def load_hardware(arg: str, use_profile: bool = True) -> Hardware:
    """The one entry point: preset name, YAML path or profile JSON path (a file edited since the
    last call is read again)."""
    return _load_hardware(arg, use_profile, file_stamp(arg))


@lru_cache(maxsize=256)
def _load_hardware(arg: str, use_profile: bool, _stamp: tuple[int, int] | None) -> Hardware:
    p = Path(arg)
    if p.suffix == ".json":
        return read_profile(p).hardware
    if p.suffix in (".yaml", ".yml") or p.exists():
        return hardware_from_dict(load_mapping(p), str(p))
    raw = _raw_preset(arg)
    prof = _committed_profile(arg) if use_profile else None
    if prof is not None:
        raw = deep_merge(raw, _fitted_fields(prof))
        raw["profile"] = f"calibration/profiles/{arg}.json"
    return hardware_from_dict(raw, str(PRESET_DIR / f"{arg}.yaml"))
