// Services of the black-box guarantee tests (tests/test_guarantees.py), served by
// tests/tools/counting_backend.py (thriftpy2). Every reply says which service and method
// answered, echoes the arguments and carries the backend's call counters, so a test can tell
// whether a caller got the answer to its own request and how often the backend was called.

struct Echo {
  1: string answered_by   // "Supervisor" or "Poetry": the service that answered
  2: string method
  3: string arg
  4: map<string, string> opts
  5: i64 call             // how many times this exact call (service, method, arg, opts) arrived
  6: i64 total            // calls this backend received so far, all methods
}

exception Busy {
  1: string why
}

service Supervisor {
  Echo echo(1: string arg, 2: map<string, string> opts, 3: double delay),
  Echo lookup(1: string arg, 2: map<string, string> opts, 3: double delay),
  Echo page(1: string message) throws (1: Busy busy),
  map<string, i64> counts()
}

service Poetry {
  Echo echo(1: string arg, 2: map<string, string> opts, 3: double delay),
  Echo lookup(1: string arg, 2: map<string, string> opts, 3: double delay),
  map<string, i64> counts()
}
