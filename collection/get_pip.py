"""Stand-in for the get-pip script ansible-test bootstraps its virtualenvs with.

ansible-test --venv creates each virtualenv without pip and downloads a get-pip script
from ci-files.testing.ansible.com, which this network does not reach; it uses a copy
in ~/.ansible/test/cache/ instead when one is there (`make sanity` puts this file
there). It does the same job from what Python and PyPI provide: pip from the
interpreter's own ensurepip, then the pip version ansible-test asked for, from PyPI.
Called as get-pip is: `<python> quiet_pip.py [pip options] pip==<version> [--no-setuptools]
[--no-wheel]`.
"""

from __future__ import annotations

import os
import subprocess
import sys

# Options of get-pip itself (no setuptools or wheel besides pip): not pip's.
GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")

if __name__ == "__main__":
    # Each in its own process: ensurepip clears the PIP_* settings of the process it
    # runs in (pip's configuration files included), which the second step needs.
    subprocess.run([sys.executable, "-m", "ensurepip"], check=True, env=dict(os.environ))
    args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
    sys.exit(subprocess.run([sys.executable, "-m", "pip", "install", *args]).returncode)
