"""Train an MPT model: `composer launch/train.py yamls/pretrain/demo.yaml [key=value ...]`.

Composer's launcher starts one copy of this script per process; each validates every value of
the config before importing torch or Composer (foundry/config/), so a mistake is reported in
about a second of each process's start, once (local rank 0), in one line.
"""

import sys

from foundry.train import main

if __name__ == '__main__':
    sys.exit(main())
