"""A model-rule mistake through the real launcher (`composer -n 2 launch/train.py`): one line, once.

tests/config/test_bad_inputs.py runs the whole table in-process, and tests/e2e/test_train_launcher.py sends a
misspelt key (refused before torch is imported) through the launcher; this case is refused by MPTConfig in
each rank (torch and transformers imported, the modeling code not): local rank 0 prints the line, rank 1
stays quiet (the launcher prints no block of its output), the exit status is 2.
"""

import time

import pytest

from tests.e2e.conftest import launch, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.mark.parametrize('override, expected', [
    ('model.n_heads=3', 'foundry: config error: `model.d_model`: d_model (32) must be divisible by n_heads (3)'),
])
def test_config_error_is_one_line_from_local_rank_zero_only(override, expected, tiny_data, tmp_path):
    started = time.monotonic()
    result = launch(tiny_overrides(tiny_data, str(tmp_path), override))
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    print(f'{override}: exit {result.returncode} after {seconds:.1f} s')
    assert result.returncode == 2, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith('foundry:')]
    assert len(lines) == 1 and lines[0].startswith(expected), output
    assert 'Traceback' not in output
    assert 'Begin global rank 1' not in output  # rank 1 ended by the launcher's SIGTERM, quietly
    assert not (tmp_path / 'checkpoints').exists()
