// Second example service, so the gateway can route more than one backend.
// Regenerate the committed Python code with `make idl`.

exception PoemNotFound {
  1: string title
}

service Poetry {
  // Replies a poem containing `title` after the backend's --delay;
  // "missing:..." raises PoemNotFound, "crash:..." fails with TApplicationException.
  string getPoem(1: string title) throws (1: PoemNotFound missing),

  // Calls received per method so far (counted on arrival), answered at once.
  map<string, i64> backendStats()
}
