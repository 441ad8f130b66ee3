"""The scan engine: direction plans, selective scan backends and their single entry point."""
from .plans import (
    DirectionPlan, build_index, cross_scan, cross_scan_rows, cross_merge, VMAMBA_PLAN, VIM_PLAN, EFFICIENT_VMAMBA_PLAN,
    GROUPED_PLAN, MERGE_MODES, validate_index,
)
from .selective_scan import selective_scan_ref, selective_scan_fast
from .backend import (
    Capabilities, ScanBackend, ScanRequest, UnsupportedScanError, register_backend, unregister_backend, get_backend,
    available_backends, resolve_backend, default_backend, recompute_grads, ALL_FLOAT_DTYPES, REDUCED_FLOAT_DTYPES,
)
from .scan import (
    plan_selective_scan, plan_scan_reference, plan_scan_fast, scan_over_plan, scan_request, expand_delta,
    empty_output, ScanInputError, BACKEND_ENV, CPU_KERNEL_ENV,
)
from .ssd import plan_ssd_scan, plan_ssd_reference, plan_ssd_fast, plan_ssd_export, ssd_request
