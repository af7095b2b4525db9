"""viewer: arrives with its issue."""
