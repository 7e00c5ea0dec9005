"""`relayrl serve`: an OpenAI-compatible server over a relayrl model (schemas, the batching engine, the app)."""
