"""The ``roomcast`` command line: router, node, up, and the inspection commands."""
