"""Model folders (converted weights) and, later, whole training states."""
