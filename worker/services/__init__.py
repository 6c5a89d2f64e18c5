"""The service framework and the long-running services: the persister,
the retention trimmer, the health and metrics server."""
