"""The dependency providers every service declares besides its unit of work (common.kit.base)."""
from nameko.contextdata import ContextDataProvider
from nameko.extensions import DependencyProvider

from common.contract.caller import CALLER_KEY, Caller
from common.contract.settings import settings_of


class CallerProvider(ContextDataProvider):
    """The Caller of this worker, or None when the RPC carried none."""
    context_key = CALLER_KEY

    def get_dependency(self, worker_ctx):
        return Caller.from_context(worker_ctx.data.get(self.context_key))


class SettingsProvider(DependencyProvider):
    """`self.settings` in a worker: the Settings the service was started with."""

    def get_dependency(self, worker_ctx):
        return settings_of(self.container)


class ContextData(DependencyProvider):
    """`self.context_data` in a worker: what its call carried (request id, deadline, ...), read only."""

    def get_dependency(self, worker_ctx):
        return dict(worker_ctx.data)
