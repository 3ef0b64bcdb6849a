"""Engine.IO v4 and Socket.IO v5 (and the WebSocket frames that carry them), sans-I/O: bytes
and time in, events and bytes out.

Nothing in this package may import asyncio, aiohttp or zmq (a test checks).
"""
