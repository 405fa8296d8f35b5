"""vLLM knowledge (versions, flags) and the command line rendered from a serving spec."""
