"""Output for scripts: the JSON documents and CSV tables of every command, and the JSON-safe conversion they share."""
