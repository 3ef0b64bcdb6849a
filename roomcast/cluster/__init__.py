"""The bus: wire format, the pyzmq transport, and the gossiped membership replica.

Nothing here knows Socket.IO: payloads are opaque encoded packets.
"""
