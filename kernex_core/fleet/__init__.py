"""The fleet repository model: load and validate, resolve desired state, plan changes.

    files (path -> bytes) --load_fleet--> Fleet --resolve--> {device: DesiredState}
    two revisions' resolved states --compute_plan--> Plan

See docs/fleet-repo.md for the repository format.
"""

from kernex_core.fleet.load import (
    FLEET_DIRS,
    FLEET_FILE,
    FLEET_FILE_PATTERNS,
    fleet_file_kind,
    is_fleet_file,
    load_fleet,
)
from kernex_core.fleet.model import (
    API_VERSION,
    BundleVersion,
    Defaults,
    DesiredState,
    DeviceSpec,
    FleetSettings,
    Group,
    RolloutPolicy,
    TrustedSigner,
)
from kernex_core.fleet.plan import (
    BundleChange,
    ConfigChange,
    DevicePlan,
    Plan,
    compare_versions,
    compute_plan,
)
from kernex_core.fleet.resolve import Conflict, Fleet, merge_patch
from kernex_core.fleet.selector import Selector, SelectorSyntaxError, parse_selector
from kernex_core.fleet.source import MAX_FILE_BYTES, MAX_TOTAL_BYTES

__all__ = [
    "API_VERSION",
    "FLEET_DIRS",
    "FLEET_FILE",
    "FLEET_FILE_PATTERNS",
    "MAX_FILE_BYTES",
    "MAX_TOTAL_BYTES",
    "BundleChange",
    "BundleVersion",
    "ConfigChange",
    "Conflict",
    "Defaults",
    "DesiredState",
    "DevicePlan",
    "DeviceSpec",
    "Fleet",
    "FleetSettings",
    "Group",
    "Plan",
    "RolloutPolicy",
    "Selector",
    "SelectorSyntaxError",
    "TrustedSigner",
    "compare_versions",
    "compute_plan",
    "fleet_file_kind",
    "is_fleet_file",
    "load_fleet",
    "merge_patch",
    "parse_selector",
]
