"""Pure decisions: the gate verdict over the configured rules, and its Markdown report."""
