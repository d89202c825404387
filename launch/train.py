"""Train an MPT model: `composer launch/train.py yamls/pretrain/demo.yaml [key=value ...]`.

Composer's launcher starts one copy of this script per process; each validates the
config before any process group exists, so a bad key fails fast with one message.
"""

import sys

from foundry.train import main

if __name__ == '__main__':
    sys.exit(main())
