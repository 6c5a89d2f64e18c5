"""The service framework and the long-running services: the persister,
the retention trimmer, the health and metrics server."""

# Each service is imported here so that `Service.all_services()` (its
# subclasses) finds all three whichever module of the package is imported,
# in this order: the order the services are listed, started and stopped in.
# isort: off
from worker.services.event_persister import EventPersister
from worker.services.retention_trimmer import RetentionTrimmer
from worker.services.metrics_server import MetricsServer

# isort: on

__all__ = ["EventPersister", "MetricsServer", "RetentionTrimmer"]
