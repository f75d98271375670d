"""A calibration profile: fitted efficiencies and host costs for one real device, with provenance.

Lives in hwmodels (not calibration) because the simulator reads profiles without torch.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from hwmodels.spec import Hardware, Strict

SCHEMA = "momentsim-profile/1"


class Profile(Strict):
    schema_: str = Field(alias="schema", description=f"must be {SCHEMA!r}")
    hardware: Hardware = Field(description="the full hardware description, efficiencies fitted")
    fingerprint: dict[str, Any] = Field(description="device name, units, clocks, memory, driver, torch, date")
    provenance: dict[str, str] = Field(default_factory=dict, description="parameter -> where it came from")
    fit: dict[str, Any] = Field(default_factory=dict, description="fit quality: cases, median and worst error")
    measurements: list[dict[str, Any]] = Field(default_factory=list, description="raw microbenchmarks")
