"""What the tests share: harnesses, process launchers, stand-ins, one port helper, one timing
unit. Test modules import it as ``support.<module>`` (``tests/`` is on pytest's pythonpath)."""
