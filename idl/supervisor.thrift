// Example service behind the gateway (see README, "Example services").
// Regenerate the committed Python code with `make idl`.

exception SupervisorBusy {
  1: string reason
}

service Supervisor {
  // Slow, coalescable call: replies "ack:" + message after the backend's --delay.
  // "busy:..." raises SupervisorBusy, "crash:..." fails with TApplicationException.
  string alertSupervisor(1: string message) throws (1: SupervisorBusy busy),

  // Fire-and-forget; the backend only counts it.
  oneway void notify(1: string message),

  // Calls received per method so far (counted on arrival), answered at once.
  map<string, i64> backendStats()
}
