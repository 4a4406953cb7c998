"""Timers whose interval is a setting: `@every("RECONCILE_INTERVAL_SECONDS")`."""
from nameko.timer import Timer

from common.contract.settings import settings_of


class SettingsTimer(Timer):
    """nameko's timer with its interval taken from a setting when the service
    starts (nameko's own takes a number when the class is defined)."""

    def __init__(self, setting, **kwargs):
        super().__init__(interval=None, **kwargs)
        self.setting = setting.lower()

    def setup(self):
        super().setup()
        self.interval = getattr(settings_of(self.container), self.setting)


every = SettingsTimer.decorator
