"""When a sender runs: a timer entrypoint that a commit can wake (notification_service's emails,
webhook_service's deliveries).

`@sender("SOME_SWEEP_INTERVAL_SECONDS")` runs its method once at start,
then again when woken (`self.wake_sender()`, after something was queued to
send; it waits GATHER_SECONDS first, so what a burst queues goes out as one
batch), when a retry it scheduled is due (the method returns the seconds
until its earliest), and at the latest every interval (a safety net: it also
picks up what another instance or an earlier process scheduled). One run at
a time per process; a wake-up during a run makes another run right after it.
"""
import threading
import time

from nameko.extensions import DependencyProvider

from common.kit.timers import SettingsTimer

# Never run back to back faster than this (e.g. while another instance holds a due row).
MIN_PAUSE_SECONDS = 0.05
# A woken sender waits this long for more work to join its batch.
GATHER_SECONDS = 0.1


class SenderTimer(SettingsTimer):
    def setup(self):
        super().setup()
        self._woken = threading.Event()  # green under eventlet's monkey patching
        self._retry_due = None  # time.monotonic() of the earliest retry the runs scheduled

    def wake(self):
        self._woken.set()

    def stop(self):
        self.should_stop.send(True)
        self._woken.set()
        self.gt.wait()

    def _run(self):
        pause = 0.0  # a first run at start: what was due before a restart goes out now
        while True:
            if self._woken.wait(pause) and not self.should_stop.ready():
                time.sleep(GATHER_SECONDS)
            if self.should_stop.ready():
                return
            self._woken.clear()
            started = time.monotonic()
            if self._retry_due is not None and self._retry_due <= started:
                self._retry_due = None  # this run sends it
            self.handle_timer_tick()
            self.worker_complete.wait()
            self.worker_complete.reset()
            if self.should_stop.ready():
                return
            pause = self.interval
            if self._retry_due is not None:
                pause = max(MIN_PAUSE_SECONDS, min(pause, self._retry_due - time.monotonic()))

    def handle_result(self, worker_ctx, result, exc_info):
        if exc_info is None and isinstance(result, (int, float)):
            due = time.monotonic() + result
            self._retry_due = due if self._retry_due is None else min(self._retry_due, due)
        return super().handle_result(worker_ctx, result, exc_info)


sender = SenderTimer.decorator


class SenderWake(DependencyProvider):
    """`self.wake_sender()` in a worker: run the service's sender now (or right after its current run)."""

    def get_dependency(self, worker_ctx):
        return self.wake

    def wake(self):
        for entrypoint in self.container.entrypoints:
            if isinstance(entrypoint, SenderTimer):
                entrypoint.wake()
