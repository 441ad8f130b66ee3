import os

import torch

# Without a GPU the Triton kernels run under Triton's CPU interpreter. The switch is read when triton is
# first imported (timm imports it through torch._inductor), so it is set here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402

# two threads were erratic on the CI machine; every CPU test runs single-threaded
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)
