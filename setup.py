"""vssm: vision state-space backbones (VMamba, Vim, LocalMamba, EfficientVMamba) on timm conventions."""
from setuptools import find_packages, setup

setup(
    name='vssm',
    version='0.1.0',
    description='Vision state-space backbones on timm conventions: one scan engine, four families',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['vssm', 'vssm.*']),
    python_requires='>=3.11',
    install_requires=[
        'torch==2.14.1',
        'torchvision==0.29.1',
        'timm==1.0.31',
        'numpy',
        'pyyaml',
        'tqdm',
        'matplotlib',
        'scikit-learn',  # ships the handwritten-digits set the embedded training default uses
    ],
    extras_require={
        'dev': ['pytest', 'pytest-xdist', 'hypothesis', 'fvcore', 'pandas'],
        # mmcv has no PyPI wheels: scripts/install_mm.sh installs this stack (wheel cache or source build);
        # mmengine 0.10.7 needs pkg_resources at run time, hence setuptools<81
        'mm': ['mmengine==0.10.7', 'mmcv==2.1.0', 'mmdet==3.3.0', 'mmsegmentation==1.2.2', 'ftfy', 'regex',
               'pycocotools', 'setuptools<81'],
        # tools/export.py: torch.onnx's exporter (onnxscript) and onnxruntime to run and check the ONNX files
        'deploy': ['onnx>=1.23', 'onnxscript>=0.7', 'onnxruntime>=1.32'],  # the versions tested
    },
    license='MIT',
)
