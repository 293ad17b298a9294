"""The REST routes, one router per area; each route parses, calls score once, and maps."""
