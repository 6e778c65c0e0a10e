"""``accelerate launch -m idm_vton.train ...``: the ``idm-vton train`` command as a module.

A thin entry point kept for launch scripts; the options are :mod:`idm_vton.commands.train`'s.
"""

import sys

from .commands.train import main

if __name__ == "__main__":
    sys.exit(main())
