import pytest
from mpt_helpers import make_ids


@pytest.fixture
def ids():
    return make_ids()
