"""pyinfra facts of llmfleet: one module per subject (nvidia, ascend, host)."""
