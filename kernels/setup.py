"""Build the optional native CUDA backend of vssm's plan scan: `pip install --no-build-isolation ./kernels`.

Targets sm_80 and sm_90 (plus PTX for newer GPUs) unless TORCH_CUDA_ARCH_LIST says otherwise; needs the
CUDA toolkit whose major version matches torch.version.cuda. No GPU is needed to build.
"""
import os
from pathlib import Path

# nvcc is often reached through a wrapper script on PATH (/usr/local/bin/nvcc), from which torch guesses a
# wrong CUDA_HOME (/usr/local); point it at the toolkit before torch reads it
if not (os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH')) and Path('/usr/local/cuda/bin/nvcc').exists():
    os.environ['CUDA_HOME'] = '/usr/local/cuda'
os.environ.setdefault('TORCH_CUDA_ARCH_LIST', '8.0;9.0+PTX')

from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CUDAExtension  # noqa: E402

HERE = Path(__file__).resolve().parent
CSRC = HERE / 'csrc'
SOURCES = ['binding_cuda.cpp', 'scan_f32.cu', 'scan_f16.cu', 'scan_bf16.cu']

setup(
    name='vssm-cuda-scan',
    version='0.1.0',
    description="Native CUDA kernels for vssm's fused cross-scan selective scan",
    ext_modules=[
        CUDAExtension(
            name='vssm_cuda_scan',
            # relative paths: setuptools rejects absolute source paths in some versions
            sources=[os.path.relpath(CSRC / s, HERE) for s in SOURCES],
            include_dirs=[str(CSRC)],
            # -g0: Python's default flags add -g, which doubles the compile time of the torch binding
            extra_compile_args={'cxx': ['-O2', '-g0'], 'nvcc': ['-O3', '-lineinfo']},
        )
    ],
    cmdclass={'build_ext': BuildExtension},
    python_requires='>=3.9',
    zip_safe=False,
)
