"""The scan engine: direction plans, selective scan backends and their single entry point."""
from .plans import (
    DirectionPlan, build_index, cross_scan, cross_scan_rows, cross_merge, VMAMBA_PLAN, VIM_PLAN, EFFICIENT_VMAMBA_PLAN,
    GROUPED_PLAN, MERGE_MODES, validate_index,
)
from .selective_scan import selective_scan_ref, selective_scan_fast
from .scan import (
    plan_selective_scan, plan_scan_reference, plan_scan_fast, register_backend, available_backends,
    resolve_backend, expand_delta, Backend, ScanInputError, BACKEND_ENV, CPU_KERNEL_ENV,
)
from .ssd import plan_ssd_scan, plan_ssd_reference, plan_ssd_fast, plan_ssd_export, register_ssd_backend, SSDBackend
