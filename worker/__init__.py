"""The event persister: Kafka topics into PostgreSQL."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("event-persister")
except PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "unknown"
