"""The ground the rest stands on: settings, errors, metrics, conditions, the
Kafka admin helpers, the lease. Imports nothing from the other packages."""
