"""The planner: multiplies a model's tensor inventory by formats (see planner.plan)."""
