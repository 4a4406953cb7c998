"""The Nameko service kit: the base class every service inherits (shared providers,
one `health`), RPC, the unit of work, the outbox and its relay, reliable consumers,
paging, timers, the runner, and the few patches of library internals."""
