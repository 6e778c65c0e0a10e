"""``accelerate launch -m idm_vton.train ...``: the ``idm-vton train`` command as a module.

A thin entry point kept for launch scripts; the options are :mod:`idm_vton.commands.train`'s.
"""

import sys

from .commands.main import exit_quietly_on_interrupt
from .commands.train import main

if __name__ == "__main__":
    code = main()
    exit_quietly_on_interrupt("idm_vton.train")  # a Ctrl-C while exiting: one line, code 130
    sys.exit(code)
