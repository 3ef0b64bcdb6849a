"""``python -m roomcast`` is the ``roomcast`` command."""

from __future__ import annotations

import sys

from roomcast.cli.main import main

sys.exit(main())
