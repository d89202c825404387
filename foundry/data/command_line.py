"""Command lines of the data path: argparse errors as one line, exit status 2.

User mistakes (a bad flag, a missing file, a malformed record) end a script with exit code 2 and
one line on stderr, never a traceback: the traceback is noise and hides the one line that says
what to fix. Shared by the converters (foundry.data.prep) and the packing report
(foundry.data.stream.finetuning.report).
"""

from __future__ import annotations

import argparse
import difflib
import posixpath
import re
import sys
from typing import NoReturn

__all__ = ['OneLineArgumentParser', 'fail']


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, with a nearest-flag hint for typos."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        # argparse reports missing required flags before unknown ones, so a typo such as
        # --pth would be reported as "--path is required"; name the typo first instead.
        argv = sys.argv[1:] if args is None else list(args)
        known = {opt for action in self._actions for opt in action.option_strings}
        unknown = [a.split('=', 1)[0] for a in argv
                   if a.startswith('--') and a != '--' and a.split('=', 1)[0] not in known]
        if unknown:
            self.error(f'unrecognized arguments: {" ".join(unknown)}')
        return super().parse_args(argv, namespace)

    def error(self, message: str) -> NoReturn:
        match = re.match(r'unrecognized arguments: (.*)', message)
        if match:
            known = [opt for action in self._actions for opt in action.option_strings]
            hints = []
            for arg in match.group(1).split():
                flag = arg.split('=', 1)[0]
                close = difflib.get_close_matches(flag, known, n=1)
                if close:
                    hints.append(f'{flag} -> {close[0]}')
            if hints:
                message += f' (did you mean: {", ".join(hints)}?)'
        fail(f'{message}; see --help', prog=self.prog)


def fail(message: str, prog: str | None = None) -> NoReturn:
    """Print ``prog: error: message`` as one line and exit with status 2."""
    prog = prog or posixpath.basename(sys.argv[0] or 'foundry')
    one_line = ' '.join(str(message).split())
    print(f'{prog}: error: {one_line}', file=sys.stderr, flush=True)
    raise SystemExit(2)
