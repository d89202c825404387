"""llm-foundry's `scripts/train/train.py`, which its wheel does not ship: the same two lines.

    <llm-foundry venv>/bin/composer -n N launch/bench/llmfoundry_train.py YAML [key=value ...]
"""

import sys

from llmfoundry.command_utils import train_from_yaml

if __name__ == '__main__':
    yaml_path, args_list = sys.argv[1], sys.argv[2:]
    train_from_yaml(yaml_path, args_list)
