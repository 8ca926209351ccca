"""Configuration: TOML file to validated, immutable values."""
