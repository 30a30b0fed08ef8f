"""budgetsft."""
