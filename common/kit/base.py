"""The base class of every Nameko service: the providers each one declares, and `health`.

    class InventoryService(ServiceBase):
        name = "inventory_service"
        uow = UnitOfWork(storage.layout)

A subclass adds its unit of work (its own schema), its RPC proxies and its
entrypoints; nameko finds the inherited providers and `health` like its own.
"""
from common.kit.providers import CallerProvider, SettingsProvider
from common.kit.rpc import rpc
from common.observability.log import RequestLogContext
from common.observability.metrics import ServiceMetrics
from common.observability.tracing import Tracing


class ServiceBase:
    settings = SettingsProvider()
    log_context = RequestLogContext()
    tracing = Tracing()
    metrics = ServiceMetrics()
    caller = CallerProvider()
    uow = None  # each service's UnitOfWork(storage.layout)

    @rpc
    def health(self):
        """The gateway's GET /health asks every service: it answers once its database does."""
        with self.uow.single_statement() as store:
            store.ping()
        return {"service": self.name, "database": "ok"}
