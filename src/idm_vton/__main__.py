"""``python -m idm_vton`` runs the command line."""

import sys

try:
    from .commands.main import cli
except KeyboardInterrupt:  # Ctrl-C while the command line itself is imported
    print("idm-vton: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(cli())
