"""DVC stages: thin click commands that read their params section, call pipeline/, write atomically."""
