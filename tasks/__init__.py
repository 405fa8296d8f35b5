"""llmfleet tasks: facts, operations and @deploy functions, one capability per module."""
