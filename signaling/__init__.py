"""signaling: arrives with its issue."""
