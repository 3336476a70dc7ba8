"""Settings, CLI, client, OpenAI-compatible server, integrations."""
