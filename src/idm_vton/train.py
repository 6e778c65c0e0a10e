"""``accelerate launch -m idm_vton.train ...``: the ``idm-vton train`` command as a module.

A thin entry point kept for launch scripts; the options are :mod:`idm_vton.commands.train`'s.
"""

import sys

from .commands.train import main, parse_args

if __name__ == "__main__":
    try:
        sys.exit(main(parse_args()))
    except ValueError as err:
        print(f"idm_vton.train: error: {err}", file=sys.stderr)
        sys.exit(2)
