"""The `persister` command line."""

from worker.cli import operate, service
from worker.cli.common import app

# Importing the command modules registers their commands on `app`.
__all__ = ["app", "operate", "service"]
