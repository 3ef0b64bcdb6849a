"""The edge node: aiohttp routes, transports, namespaces, rooms and the built-in relay."""
