"""Deployment: any vssm model (or features_only backbone) to ONNX, a torch.export program (.pt2) or an
AOTInductor package, and a check of the artifact against eager PyTorch.

While ``torch.export`` traces, the scan runs as standard ops (``vssm.ops.export_scan``), so the ONNX file
needs no custom-op domain in onnxruntime. The image size is fixed per export (the scan's index maps and loop
lengths follow from it; any H x W, non-square included); the batch dimension is dynamic by default, as timm's
ONNX exporter makes it (traced at an example batch of 2; ``dynamic_batch=False`` fixes it at ``batch_size``).
``tools/export.py`` is the command line over this module.

Everything a request can get wrong is checked by ``check_request`` and ``build_model`` (a meta-device build
and forward) before weights load or any export starts.
"""
import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from torch.utils._pytree import tree_leaves

__all__ = [
    'FORMATS', 'ExportConfigError', 'ExportRequest', 'vssm_models', 'check_request', 'build_model',
    'example_input', 'export_program', 'save_artifact', 'load_artifact', 'max_differences', 'onnx_op_domains',
    'export_and_check',
]

FORMATS = ('onnx', 'pt2', 'aoti')
# the largest batch a dynamic-batch artifact promises; torch.export needs a finite range only for its checks
MAX_DYNAMIC_BATCH = 4096
_logger = logging.getLogger(__name__)


class ExportConfigError(ValueError):
    """A request that cannot export (unknown model, impossible option combination, missing tool)."""


@dataclass
class ExportRequest:
    """What to export. batch_size: the example batch (default 2 with a dynamic batch, torch.export fixes a
    dimension traced at 1) and, with ``dynamic_batch=False``, the only batch the artifact runs (default 1)."""
    model: str
    format: str
    img_size: Tuple[int, int]
    output: str
    checkpoint: Optional[str] = None
    batch_size: Optional[int] = None
    dynamic_batch: bool = True
    features_only: bool = False
    model_kwargs: Dict = field(default_factory=dict)
    reparameterize: bool = False  # fold BatchNorms etc. (timm's reparameterize_model) before export

    def __post_init__(self):
        if self.batch_size is None:
            self.batch_size = 2 if self.dynamic_batch else 1


def _is_vssm(name: str) -> bool:
    if not timm.is_model(name):
        return False
    from timm.models import model_entrypoint
    return model_entrypoint(name).__module__.startswith('vssm.')


def vssm_models() -> List[str]:
    import vssm  # noqa: F401  (registers the models)
    return [n for n in timm.list_models() if _is_vssm(n)]


def check_request(req: ExportRequest) -> None:
    """Option combinations and tools, checked in milliseconds (no model is built)."""
    import vssm  # noqa: F401
    if not _is_vssm(req.model):
        import difflib
        close = difflib.get_close_matches(req.model, vssm_models(), n=3)
        raise ExportConfigError(f'unknown vssm model {req.model!r}' + (f'; did you mean {close}?' if close else
                                                                          f'; vssm models: {vssm_models()}'))
    if req.format not in FORMATS:
        raise ExportConfigError(f'format must be one of {FORMATS}, got {req.format!r}')
    if len(req.img_size) != 2 or min(req.img_size) < 1:
        raise ExportConfigError(f'img_size must be (H, W) with positive sides, got {tuple(req.img_size)}')
    if req.batch_size < 1:
        raise ExportConfigError(f'batch size must be at least 1, got {req.batch_size}')
    if req.dynamic_batch and req.batch_size < 2:
        # torch.export specialises sizes 0 and 1: a batch-1 example would fix the batch at 1
        raise ExportConfigError('a dynamic batch needs an example batch of at least 2 (torch.export fixes a '
                                'dimension traced at size 1); pass --batch-size 2 or more, or --static-batch '
                                'for an artifact that runs at batch 1 only')
    if req.dynamic_batch and req.batch_size > MAX_DYNAMIC_BATCH:
        raise ExportConfigError(f'a dynamic batch is exported for 2..{MAX_DYNAMIC_BATCH}, got --batch-size '
                                f'{req.batch_size}')
    if req.checkpoint is not None and not os.path.isfile(req.checkpoint):
        raise ExportConfigError(f'checkpoint file {req.checkpoint!r} does not exist')
    if req.format == 'onnx':
        missing = [m for m in ('onnx', 'onnxscript', 'onnxruntime') if importlib.util.find_spec(m) is None]
        if missing:
            raise ExportConfigError(f'ONNX export needs {missing}: pip install -e ".[deploy]"')
    if req.format == 'aoti':
        if not str(req.output).endswith('.pt2'):
            raise ExportConfigError(f'an AOTInductor package must be named *.pt2, got {req.output!r}')
        if not (os.environ.get('CXX') or shutil.which('c++') or shutil.which('g++') or shutil.which('clang++')):
            raise ExportConfigError('AOTInductor compiles C++: no compiler found (set CXX or install g++)')
    out_dir = os.path.dirname(os.path.abspath(req.output))
    if not os.path.isdir(out_dir):
        raise ExportConfigError(f'output folder {out_dir!r} does not exist')


def _create(req: ExportRequest, device=None, pretrained: bool = False) -> torch.nn.Module:
    kwargs = dict(req.model_kwargs)
    if req.features_only:
        kwargs['features_only'] = True
    if pretrained:
        kwargs['pretrained_cfg_overlay'] = dict(file=req.checkpoint)
    if device is not None:
        kwargs['device'] = device
    return timm.create_model(req.model, pretrained=pretrained, **kwargs).eval()


def build_model(req: ExportRequest) -> torch.nn.Module:
    """The eval-mode model with the request's weights; a meta-device build and forward first, so a wrong
    option, kwarg or image size fails in a second, before weights load."""
    try:
        meta = _create(req, device='meta')
        with torch.no_grad():
            meta(torch.empty(req.batch_size, _in_chans(req), *req.img_size, device='meta'))
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError, AssertionError) as e:
        what = 'features_only backbone' if req.features_only else 'model'
        raise ExportConfigError(f'cannot build or run {req.model} as a {what} at {req.img_size[0]}x'
                                f'{req.img_size[1]} with {req.model_kwargs or "default args"}: {e}') from e
    model = _create(req, pretrained=req.checkpoint is not None)
    if req.reparameterize:
        from timm.utils.model import reparameterize_model
        model = reparameterize_model(model, inplace=True)
    return model


def _in_chans(req: ExportRequest) -> int:
    return int(req.model_kwargs.get('in_chans', 3))


def example_input(req: ExportRequest, batch: int, seed: int = 0) -> torch.Tensor:
    """A random image batch at the request's size (seeded: the same input for every format)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, _in_chans(req), *req.img_size, generator=g)


def export_program(model: torch.nn.Module, example: torch.Tensor, dynamic_batch: bool = False):
    """torch.export.export of ``model`` at the example's shape; batch dimension symbolic if asked."""
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim('batch', min=1, max=MAX_DYNAMIC_BATCH)},)
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)


def _output_names(ep) -> List[str]:
    n = len(ep.graph_signature.user_outputs)
    return ['logits'] if n == 1 else [f'features_{i}' for i in range(n)]


def save_artifact(ep, fmt: str, path: str) -> str:
    """Write the exported program as ONNX, a .pt2 ExportedProgram or an AOTInductor .pt2 package."""
    if fmt == 'pt2':
        torch.export.save(ep, path)
    elif fmt == 'onnx':
        program = torch.onnx.export(ep, (), dynamo=True, input_names=['image'], output_names=_output_names(ep),
                                    optimize=True, verbose=False)
        program.save(path)
    elif fmt == 'aoti':
        from torch._inductor import aoti_compile_and_package
        aoti_compile_and_package(ep, package_path=path)
    else:
        raise ExportConfigError(f'format must be one of {FORMATS}, got {fmt!r}')
    return path


def load_artifact(path: str, fmt: str,
                  num_threads: Optional[int] = None) -> Callable[[torch.Tensor], List[torch.Tensor]]:
    """A callable image batch -> list of output tensors: onnxruntime (CPU) for ONNX, the loaded
    ExportedProgram for pt2, the AOTInductor runner for aoti."""
    if fmt == 'onnx':
        import onnxruntime as ort
        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = num_threads
        session = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
        name = session.get_inputs()[0].name
        return lambda x: [torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})]
    if fmt == 'pt2':
        module = torch.export.load(path).module()
        return lambda x: tree_leaves(module(x))
    if fmt == 'aoti':
        from torch._inductor import aoti_load_package
        runner = aoti_load_package(path)
        return lambda x: tree_leaves(runner(x))
    raise ExportConfigError(f'format must be one of {FORMATS}, got {fmt!r}')


def max_differences(expected: Sequence[torch.Tensor], got: Sequence[torch.Tensor]) -> Tuple[float, float]:
    """(max |got - expected|, that over max |expected|), over all outputs."""
    expected, got = list(expected), list(got)
    if len(expected) != len(got):
        raise ValueError(f'the artifact gave {len(got)} outputs, eager PyTorch {len(expected)}')
    abs_diff, scale = 0.0, 0.0
    for e, g in zip(expected, got):
        e, g = e.detach(), g.detach()
        if tuple(e.shape) != tuple(g.shape):
            raise ValueError(f'output shape {tuple(g.shape)} differs from eager {tuple(e.shape)}')
        abs_diff = max(abs_diff, float((g.double() - e.double()).abs().max()))
        scale = max(scale, float(e.double().abs().max()))
    return abs_diff, abs_diff / max(scale, 1e-30)


def onnx_op_domains(path: str) -> List[str]:
    """Operator domains the ONNX graph uses ('' is the standard ai.onnx set) and its local functions."""
    import onnx
    m = onnx.load(path, load_external_data=False)
    return sorted({n.domain for n in m.graph.node} | {f.domain for f in m.functions})


def export_and_check(req: ExportRequest, check: bool = False, num_threads: Optional[int] = None) -> Dict:
    """The whole job of tools/export.py: validate, build, export, save, and optionally compare with eager."""
    check_request(req)
    t0 = time.perf_counter()
    _logger.info('building %s%s', req.model, f' with weights from {req.checkpoint}' if req.checkpoint else '')
    model = build_model(req)
    example = example_input(req, req.batch_size)
    _logger.info('torch.export at batch %d, %dx%d%s', req.batch_size, *req.img_size,
                 ' (dynamic batch)' if req.dynamic_batch else '')
    ep = export_program(model, example, req.dynamic_batch)
    _logger.info('writing %s (%s)%s', req.output, req.format,
                 ': AOTInductor compiles C++, this takes minutes for a full model' if req.format == 'aoti' else '')
    save_artifact(ep, req.format, req.output)
    result = dict(model=req.model, format=req.format, output=req.output, img_size=tuple(req.img_size),
                  batch_size=req.batch_size, dynamic_batch=req.dynamic_batch,
                  size_mb=_artifact_bytes(req.output) / 1e6, export_s=time.perf_counter() - t0)
    _logger.info('wrote %s: %.1f MB in %.0f s', req.output, result['size_mb'], result['export_s'])
    if check:
        run = load_artifact(req.output, req.format, num_threads)
        # a dynamic artifact at batch 1 (the size torch.export specialises), the example batch and one more
        batches = sorted({1, req.batch_size, req.batch_size + 1}) if req.dynamic_batch else [req.batch_size]
        result['checks'] = []
        for b in batches:
            x = example_input(req, b, seed=1 + b)
            with torch.no_grad():
                expected = tree_leaves(model(x))
            max_abs, max_rel = max_differences(expected, run(x))
            result['checks'].append(dict(batch=b, max_abs=max_abs, max_rel=max_rel))
    return result


def _artifact_bytes(path: str) -> int:
    data = path + '.data'  # ONNX external data, written beside the file for models over 2 GB
    return os.path.getsize(path) + (os.path.getsize(data) if os.path.exists(data) else 0)
