"""vssm: vision state-space backbones (VMamba, Vim, LocalMamba, EfficientVMamba, GroupMamba) on timm conventions."""
from setuptools import find_packages, setup

setup(
    name='vssm',
    version='0.1.0',
    description='Vision state-space backbones on timm conventions: one scan engine, five families',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['vssm', 'vssm.*']),
    # sources compiled at run time (the fused CPU scan, vssm/ops/cpu_kernel.py): in the wheel and the sdist
    # (MANIFEST.in); scripts/check_wheel.sh checks both
    package_data={'vssm.ops': ['csrc/*.cpp', 'csrc/*.h']},
    python_requires='>=3.11',
    # ranges, so installing vssm keeps the user's stack: the oldest versions its tests / API checks pass on.
    # The dev setup pins exact versions in constraints.txt (scripts/setup.sh: pip install -c constraints.txt).
    install_requires=[
        # the floors are what CI tests: tests/smoke on torch 2.13.0 with timm 1.0.29 (scripts/smoke_old_torch.sh),
        # the whole suite on the pins of constraints.txt (torch 2.14.1, timm 1.0.31); tests/test_package.py keeps
        # these floors, that script's defaults and the README in step
        'torch>=2.13',
        'torchvision',  # whichever matches the torch installed (timm needs it too)
        'timm>=1.0.29,<2',  # 1.0.29: timm.layers.get_device_dtype, device/dtype-aware layers and heads
        'numpy',
        'safetensors',  # .safetensors checkpoints (timm depends on it as well)
    ],
    extras_require={
        # the library path (import vssm, timm.create_model) needs none of these
        'plot': ['matplotlib'],  # PNG plots of tools/ (training curves, benchmarks, ERF maps)
        'data': ['scikit-learn'],  # ships the handwritten-digits set of tools/train.py's embedded default
        'tools': ['matplotlib', 'scikit-learn', 'pyyaml', 'tqdm', 'fvcore'],  # everything tools/*.py use
        'dev': ['pytest', 'pytest-xdist', 'hypothesis', 'fvcore', 'pandas', 'matplotlib', 'scikit-learn', 'pyyaml',
                'tqdm'],
        # mmcv has no PyPI wheels: scripts/install_mm.sh installs this stack (wheel cache or source build);
        # mmengine 0.10.7 needs pkg_resources at run time, hence setuptools<81
        'mm': ['mmengine==0.10.7', 'mmcv==2.1.0', 'mmdet==3.3.0', 'mmsegmentation==1.2.2', 'ftfy', 'regex',
               'pycocotools', 'setuptools<81'],
        # tools/export.py: torch.onnx's exporter (onnxscript) and onnxruntime to run and check the ONNX files
        'deploy': ['onnx>=1.23', 'onnxscript>=0.7', 'onnxruntime>=1.32'],  # the versions tested
    },
    license='MIT',
)
