"""Network adapters: one module per network, each implementing `networks.base.Network`."""
