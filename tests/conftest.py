import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Test models are tiny: one thread is faster and immune to other processes competing for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
