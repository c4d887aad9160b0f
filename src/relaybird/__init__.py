"""relaybird: mirror posts between Mastodon, Bluesky and Telegram by routing rules."""

__version__ = "0.1.0"
