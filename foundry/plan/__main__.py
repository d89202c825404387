import sys

from foundry.plan.cli import main

sys.exit(main())
