"""The ZeroMQ router: our own XSUB -> XPUB forwarding loop, stats and health."""
