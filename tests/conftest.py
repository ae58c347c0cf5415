"Shared test settings."
import pytest
import torch


@pytest.fixture(autouse=True, scope='session')
def one_thread():
    "The tests' networks are tiny: more threads only add synchronization, and OpenMP teams slow badly on a shared CPU."
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
