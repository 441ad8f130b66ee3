"""Optional dependencies (setup.py extras): a clear error naming the extra when one is missing."""
import importlib
from types import ModuleType

__all__ = ['require']


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or raise ImportError saying which vssm extra provides it and what needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = {'sklearn': 'scikit-learn'}.get(module.split('.')[0], module.split('.')[0])
        raise ImportError(f'{purpose} needs {package}, which the library install leaves out: '
                          f"pip install 'vssm[{extra}]' (or pip install {package})") from e
