"""Build the optional native CUDA backend of vssm's plan scan (module ``vssm_cuda_scan``).

    MAX_JOBS=16 python -m pip install --no-build-isolation --no-deps ./kernels
    cd kernels && MAX_JOBS=16 python setup.py build_ext --inplace      # or: python kernels/setup.py build_ext --inplace

Targets sm_80 and sm_90 (plus PTX for newer GPUs) unless TORCH_CUDA_ARCH_LIST says otherwise; needs the CUDA
toolkit whose major version matches torch.version.cuda. No GPU is needed to build. The seven translation units
(the binding, forward and backward per element type) compile in parallel through ninja, MAX_JOBS at a time.
"""
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.chdir(HERE)  # sources are relative to this folder (setuptools rejects absolute ones): run from anywhere

# nvcc is often reached through a wrapper script on PATH (/usr/local/bin/nvcc), from which torch guesses a
# wrong CUDA_HOME (/usr/local); point it at the toolkit before torch reads it
if not (os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH')) and Path('/usr/local/cuda/bin/nvcc').exists():
    os.environ['CUDA_HOME'] = '/usr/local/cuda'
os.environ.setdefault('TORCH_CUDA_ARCH_LIST', '8.0;9.0+PTX')

# torch compiles in parallel only through ninja; the pip package `ninja` puts it beside the interpreter, which
# is not always on PATH
if shutil.which('ninja') is None:
    try:
        import ninja
        os.environ['PATH'] = ninja.BIN_DIR + os.pathsep + os.environ.get('PATH', '')
    except ImportError:
        pass
if shutil.which('ninja') is None:
    print('vssm-cuda-scan: ninja not found, so the translation units compile one after another '
          '(pip install ninja for a parallel build)', file=sys.stderr)

try:
    import torch  # noqa: F401
except ImportError:  # an isolated build (plain `pip install ./kernels`), or no torch installed at all
    sys.exit('vssm-cuda-scan builds against the torch installed where it goes, so torch must be importable here. '
             'Install torch first, then build without build isolation:\n'
             '    pip install --no-build-isolation --no-deps ./kernels')

from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CUDAExtension  # noqa: E402

# the backward units are the slowest: first in line
SOURCES = ([f'scan_bwd_{t}.cu' for t in ('f32', 'f16', 'bf16')] + ['binding_cuda.cpp']
           + [f'scan_fwd_{t}.cu' for t in ('f32', 'f16', 'bf16')])

setup(
    name='vssm-cuda-scan',
    version='0.2.0',
    description="Native CUDA kernels for vssm's fused cross-scan selective scan",
    ext_modules=[
        CUDAExtension(
            name='vssm_cuda_scan',
            sources=[f'csrc/{s}' for s in SOURCES],
            include_dirs=[str(HERE / 'csrc')],
            # -g0: Python's default flags add -g, which doubles the compile time of the torch binding
            extra_compile_args={'cxx': ['-O2', '-g0'], 'nvcc': ['-O3', '-lineinfo']},
        )
    ],
    cmdclass={'build_ext': BuildExtension},
    python_requires='>=3.9',
    zip_safe=False,
)
