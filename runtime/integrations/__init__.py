"""Optional integrations, imported only when used (AbstractCore comes in a later release)."""
