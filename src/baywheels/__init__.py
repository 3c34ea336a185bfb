"""Bay Wheels orchestration and dispatch service."""
