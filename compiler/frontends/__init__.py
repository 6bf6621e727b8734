"""qcc package."""
