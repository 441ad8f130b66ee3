#!/usr/bin/env python3
"""Convert official checkpoints (VMamba, Vim, LocalMamba, EfficientVMamba, any registered family) to vssm's
format, and back to the official layout where a family defines the inverse (VMamba today).

    # official release -> vssm (a bare state_dict timm loads with pretrained_cfg_overlay=dict(file=...))
    python tools/convert_checkpoint.py --model vmamba_tiny_s1l8 vssm1_tiny_0230s_ckpt_epoch_264.pth \
        vmamba_tiny_s1l8.pth --report report.json
    # the EMA weights of the release, saved as safetensors (no pickle at all; timm loads it by the suffix)
    python tools/convert_checkpoint.py --model vim_tiny vim_t_midclstok_76p1acc.pth vim_tiny.safetensors --use-ema \
        --format safetensors
    # vssm -> official layout (loads in the official code as {'model': state_dict})
    python tools/convert_checkpoint.py --model vmamba_tiny_s1l8 vmamba_tiny_s1l8.pth official.pth --reverse

The mapping is the model family's own ``checkpoint_filter_fn`` (found from the model class's module), so the
tool needs no per-family code. The report says what happened to every tensor: renamed, kept, rebuilt (a new
tensor, e.g. reshaped or stacked), dropped, and which model keys got nothing; the result is loaded into the
model strictly before it is written.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
import timm  # noqa: E402
import vssm  # noqa: F401,E402
from timm.utils import ParseKwargs  # noqa: E402
from vssm.tools_common.checkpoints import map_state_dict, read_state_dict  # noqa: E402
from vssm.tools_common.official_layout import to_official  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='official checkpoints <-> vssm format, with a mapping report')
    p.add_argument('input', help='checkpoint to read (official release, training checkpoint or bare state_dict)')
    p.add_argument('output', help='where to write (.pth / .pt: torch.save; .safetensors: safetensors)')
    p.add_argument('--format', choices=('auto', 'torch', 'safetensors'), default='auto',
                   help='output format (auto: safetensors for a .safetensors output, else torch.save)')
    p.add_argument('--model', '-m', required=True, help='registered model name the weights belong to')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    p.add_argument('--num-classes', type=int, default=None, help='default: read from the checkpoint classifier')
    p.add_argument('--use-ema', action='store_true', default=False, help='take the EMA weights of the checkpoint')
    p.add_argument('--reverse', action='store_true', default=False, help='vssm -> official layout')
    p.add_argument('--report', default='', help='also write the report as JSON here')
    p.add_argument('--quiet', action='store_true', default=False)
    return p


def _classifier_key(model) -> Optional[str]:
    name = model.pretrained_cfg.get('classifier', 'head') if getattr(model, 'pretrained_cfg', None) else 'head'
    name = name[0] if isinstance(name, (list, tuple)) else name
    return f'{name}.weight'


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr() if t.numel() else id(t)


def describe(source: Dict[str, torch.Tensor], result: Dict[str, torch.Tensor], model_keys: List[str]) -> Dict:
    """What became of each tensor (matched by shared storage, so renames are found whatever the filter does)."""
    by_storage = {}
    for k, v in source.items():
        by_storage.setdefault(_storage(v), k)
    renamed, kept, rebuilt = {}, [], []
    for k, v in result.items():
        src = by_storage.get(_storage(v))
        if src is None:
            rebuilt.append(k)
        elif src == k:
            kept.append(k)
        else:
            renamed[src] = k
    used = set(renamed) | set(kept)
    return dict(
        source_tensors=len(source), written_tensors=len(result), kept=len(kept), renamed=len(renamed),
        rebuilt=sorted(rebuilt), dropped=sorted(k for k in source if k not in used and _storage(source[k]) not in
                                                {_storage(result[r]) for r in rebuilt}),
        missing_in_result=sorted(set(model_keys) - set(result)), renames=renamed,
    )


def output_format(args) -> str:
    """'torch' or 'safetensors'; timm and vssm recognise safetensors files by their .safetensors suffix."""
    suffix = args.output.endswith('.safetensors')
    fmt = args.format if args.format != 'auto' else ('safetensors' if suffix else 'torch')
    if fmt == 'safetensors' and not suffix:
        raise ValueError(f'--format safetensors: name the output *.safetensors (got {args.output}); timm and vssm '
                         f'tell safetensors files by that suffix')
    if fmt == 'torch' and suffix:
        raise ValueError(f'--format torch: {args.output} ends in .safetensors; name it .pth')
    if fmt == 'safetensors' and args.reverse:
        raise ValueError('--reverse writes the official layout, {"model": state_dict}, which the official code '
                         'reads with torch.load: use a .pth output')
    return fmt


def save_safetensors(state_dict: Dict[str, torch.Tensor], path: str, metadata: Dict[str, str]) -> None:
    """safetensors stores each tensor on its own: mapped tensors that are views of one source are copied."""
    from safetensors.torch import save_file
    seen, out = set(), {}
    for k, v in state_dict.items():
        ptr = _storage(v)
        out[k] = v.detach().clone().contiguous() if ptr in seen or not v.is_contiguous() else v.detach()
        seen.add(ptr)
    save_file(out, path, metadata={'format': 'pt', **metadata})


def convert(args) -> Dict:
    fmt = output_format(args)
    source = read_state_dict(args.input, use_ema=args.use_ema)
    kwargs = dict(args.model_kwargs)
    if args.num_classes is not None:
        kwargs['num_classes'] = args.num_classes
    model = timm.create_model(args.model, **kwargs)
    if args.reverse:
        result = to_official(source, model) if set(source) <= set(model.state_dict()) else None
        if result is None:
            raise ValueError(f'{args.input} is not a vssm {args.model} state_dict (keys differ from the model\'s)')
        mapped_for_check = source
    else:
        head = _classifier_key(model)
        mapped, _ = map_state_dict(source, model)
        if args.num_classes is None and head in mapped and mapped[head].shape[0] != model.state_dict()[head].shape[0]:
            kwargs['num_classes'] = mapped[head].shape[0]  # a fine-tuned release: rebuild with its class count
            model = timm.create_model(args.model, **kwargs)
            mapped, _ = map_state_dict(source, model)
        result = mapped_for_check = mapped
    model.load_state_dict(mapped_for_check, strict=True)  # the proof: every model tensor filled, no extras
    report = describe(source, result, list(model.state_dict()) if not args.reverse else [])
    report.update(model=args.model, direction='vssm -> official' if args.reverse else 'official -> vssm',
                  num_classes=model.num_classes, input=args.input, output=args.output, format=fmt)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if fmt == 'safetensors':
        save_safetensors(result, args.output, dict(model=args.model, num_classes=str(model.num_classes)))
    else:
        torch.save({'model': result} if args.reverse else result, args.output)
    return report


def format_report(r: Dict) -> str:
    lines = [f'{r["direction"]}: {r["model"]} ({r["num_classes"]} classes)',
             f'  {r["source_tensors"]} tensors read, {r["written_tensors"]} written: {r["renamed"]} renamed, '
             f'{r["kept"]} kept as named, {len(r["rebuilt"])} rebuilt, {len(r["dropped"])} dropped']
    for name in ('rebuilt', 'dropped', 'missing_in_result'):
        if r[name]:
            more = f' ... (+{len(r[name]) - 6})' if len(r[name]) > 6 else ''
            lines.append(f'  {name.replace("_", " ")}: ' + ', '.join(r[name][:6]) + more)
    examples = list(r['renames'].items())[:5]
    if examples:
        lines.append('  e.g. ' + '; '.join(f'{a} -> {b}' for a, b in examples))
    lines.append(f'  wrote {r["output"]}')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    args = build_parser().parse_args(argv)
    report = convert(args)
    if not args.quiet:
        print(format_report(report))
    if args.report:
        with open(args.report, 'w') as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == '__main__':
    main()
