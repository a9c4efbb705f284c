"""The decision pipeline, in the order data flows: request body -> context -> facts -> rules ->
findings -> cards. Free of HTTP: the edge calls it, and so do the command-line tools."""
